import { Schema } from "effect"

/**
 * An id of 1 to `max` characters matching `allowed`, written once for two uses: `schema` decodes and says what is
 * wrong; `is` gives the same verdict with a length check and one regex test, no parser. The vote path runs `is` on
 * every request and the schema only to explain a refusal (test/Domain.test.ts checks that the two agree).
 */
const textId = (max: number, allowed: RegExp, described: string) => {
  const length = { message: () => `must be 1-${max} characters` }
  return {
    schema: Schema.String.pipe(
      Schema.minLength(1, length),
      Schema.maxLength(max, length),
      Schema.pattern(allowed, { message: () => `may contain only ${described}` })
    ),
    is: (u: unknown): u is string => typeof u === "string" && u.length >= 1 && u.length <= max && allowed.test(u)
  }
}

const Identifier = textId(64, /^[A-Za-z0-9_.-]+$/, "A-Z a-z 0-9 _ - .")

const ID_DESCRIPTION = "1-64 characters of A-Z a-z 0-9 _ - ."

export const PollId = Identifier.schema.pipe(
  Schema.brand("PollId", { identifier: "PollId", title: "PollId", description: ID_DESCRIPTION })
)
export type PollId = typeof PollId.Type
export const isPollId = (u: unknown): u is PollId => Identifier.is(u)

export const OptionId = Identifier.schema.pipe(
  Schema.brand("OptionId", { identifier: "OptionId", title: "OptionId", description: ID_DESCRIPTION })
)
export type OptionId = typeof OptionId.Type
export const isOptionId = (u: unknown): u is OptionId => Identifier.is(u)

/** The contract's cap on distinct options per poll. */
export const MAX_OPTIONS_PER_POLL = 256

export type Counts = Readonly<Record<string, number>>

/**
 * An empty set of counts keyed by option id, with no prototype: an id may spell any property name of a plain object
 * (`__proto__`, `constructor`, `toString`), and on a plain object such a key would read or write the prototype's member.
 * Build every counts object with this (or `copyCounts`), never with `{}`, a spread or `Object.fromEntries`.
 */
export const newCounts = (): Record<string, number> => Object.create(null)

export const copyCounts = (from: Counts): Record<string, number> => Object.assign(newCounts(), from)

export interface PollResults {
  readonly counts: Counts
  /** Where the answer came from: `in_memory`, `redis`, `app_cache` or a shard's name. */
  readonly servedVia: string
}

export interface NodeHealth {
  readonly name: string
  readonly reachable: boolean
}

export interface Health {
  readonly nodes: ReadonlyArray<NodeHealth>
  readonly pendingVotes: number
  /**
   * With a write-behind buffer: how its flushes to each node are going. Ages are milliseconds before the answer;
   * null when it has not happened (no failure since the last success, no failure yet, no success yet).
   */
  readonly flushes?: ReadonlyArray<{
    readonly node: string
    /** Votes buffered for this node: pending, and in a batch not yet confirmed. */
    readonly pendingVotes: number
    /** Flushes to this node keep failing (two rounds in a row, or for longer than two flush intervals): degraded. */
    readonly failing: boolean
    /** Since the first failed flush after the last successful one. */
    readonly failingSinceMsAgo: number | null
    readonly lastFailureMsAgo: number | null
    readonly lastSuccessMsAgo: number | null
    readonly lastError: string | null
  }>
  /** With a journal: whether votes can be made durable; `ok: false` refuses votes with 503 and is degraded. */
  readonly journal?: {
    readonly ok: boolean
    readonly failingSinceMsAgo: number | null
    readonly lastFailureMsAgo: number | null
    readonly lastError: string | null
  }
}

export class StoreUnavailable extends Schema.TaggedError<StoreUnavailable>()("StoreUnavailable", {
  node: Schema.String,
  reason: Schema.String
}) {
  readonly status = 503
  readonly code = "store_unavailable"
  override get message() {
    return `vote store node ${this.node} is unavailable: ${this.reason}`
  }
}

export class TooManyOptions extends Schema.TaggedError<TooManyOptions>()("TooManyOptions", {
  pollId: Schema.String
}) {
  readonly status = 422
  readonly code = "too_many_options"
  override get message() {
    return `poll ${this.pollId} already has ${MAX_OPTIONS_PER_POLL} options; no new option can be added`
  }
}

export class BufferFull extends Schema.TaggedError<BufferFull>()("BufferFull", {
  pending: Schema.Number
}) {
  readonly status = 503
  readonly code = "buffer_full"
  override get message() {
    return `the write buffer holds ${this.pending} unflushed votes and the store is not accepting them; try again shortly`
  }
}

export class JournalFailed extends Schema.TaggedError<JournalFailed>()("JournalFailed", { reason: Schema.String }) {
  readonly status = 503
  readonly code = "journal_unavailable"
  override get message() {
    return `the vote journal could not be written: ${this.reason}`
  }
}

export type VoteError = StoreUnavailable | TooManyOptions | BufferFull | JournalFailed

export const addCounts = (into: Record<string, number>, from: ReadonlyMap<OptionId, number> | undefined) => {
  if (from === undefined) return into
  for (const [option, n] of from) into[option] = (into[option] ?? 0) + n
  return into
}

// ---------------------------------------------------------------------------------------------------------------------
// Defined polls: a question, a fixed set of options, optionally one vote per voter and a closing time.

const VoterText = textId(128, /^[A-Za-z0-9_.:-]+$/, "A-Z a-z 0-9 _ - . :")

export const VoterId = VoterText.schema.pipe(
  Schema.brand("VoterId", {
    identifier: "VoterId",
    title: "VoterId",
    description: "1-128 characters of A-Z a-z 0-9 _ - . :"
  })
)
export type VoterId = typeof VoterId.Type
export const isVoterId = (u: unknown): u is VoterId => VoterText.is(u)

export const VoteRequest = Schema.Struct({
  option_id: OptionId,
  voter_id: Schema.optional(VoterId)
})
export type VoteRequest = typeof VoteRequest.Type

/**
 * `VoteRequest` decoded (other properties ignored) without the parser, for the vote path: undefined wherever the
 * schema would refuse `u`, which then says why.
 */
export const voteRequestOf = (u: unknown): VoteRequest | undefined => {
  if (typeof u !== "object" || u === null) return undefined
  const { option_id, voter_id } = u as { readonly option_id?: unknown; readonly voter_id?: unknown }
  if (!isOptionId(option_id)) return undefined
  if (voter_id === undefined) return { option_id }
  return isVoterId(voter_id) ? { option_id, voter_id } : undefined
}

/** A UTF-16 surrogate standing alone (not half of a pair): no UTF-8 text can hold it. */
const LONE_SURROGATE = /\p{Cs}/u

// Lone surrogates are refused here because the stores cannot keep them: Redis's Lua JSON encoder fails on one, so a
// poll that held one could be defined but never closed.
const Text = (max: number) =>
  Schema.String.pipe(
    Schema.filter((s) => s.trim().length > 0 || "must not be blank"),
    Schema.maxLength(max, { message: () => `must be at most ${max} characters` }),
    Schema.filter((s) => !LONE_SURROGATE.test(s) || "must be valid Unicode text (it holds a lone surrogate)")
  ).annotations({ title: "text", description: `not blank, at most ${max} characters, valid Unicode` })

export const PollOption = Schema.Struct({ id: OptionId, label: Text(200) })
export type PollOption = typeof PollOption.Type

export const PollDraft = Schema.Struct({
  id: Schema.optional(PollId),
  question: Text(500),
  options: Schema.Array(PollOption).pipe(
    Schema.minItems(2, { message: () => "a poll needs at least 2 options" }),
    Schema.maxItems(64, { message: () => "a poll has at most 64 options" }),
    Schema.filter((options) => new Set(options.map((o) => o.id)).size === options.length || "option ids must be unique")
  ),
  one_vote_per_voter: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  closes_at: Schema.optional(Schema.DateTimeUtc)
})
export type PollDraft = typeof PollDraft.Type

export const PollDefinition = Schema.Struct({
  id: PollId,
  question: Schema.String,
  options: Schema.Array(PollOption),
  one_vote_per_voter: Schema.Boolean,
  closes_at: Schema.NullOr(Schema.String),
  closed: Schema.Boolean,
  created_at: Schema.String
})
export type PollDefinition = typeof PollDefinition.Type

export const isOpen = (poll: PollDefinition, now: number) =>
  !poll.closed && (poll.closes_at === null || Date.parse(poll.closes_at) > now)

export class PollNotFound extends Schema.TaggedError<PollNotFound>()("PollNotFound", { pollId: Schema.String }) {
  readonly status = 404
  readonly code = "poll_not_found"
  override get message() {
    return `no poll ${this.pollId} has been defined`
  }
}

export class PollExists extends Schema.TaggedError<PollExists>()("PollExists", { pollId: Schema.String }) {
  readonly status = 409
  readonly code = "poll_exists"
  override get message() {
    return `a poll ${this.pollId} exists already`
  }
}

export class PollClosed extends Schema.TaggedError<PollClosed>()("PollClosed", { pollId: Schema.String }) {
  readonly status = 409
  readonly code = "poll_closed"
  override get message() {
    return `poll ${this.pollId} is closed`
  }
}

export class UnknownOption extends Schema.TaggedError<UnknownOption>()("UnknownOption", {
  pollId: Schema.String,
  optionId: Schema.String
}) {
  readonly status = 422
  readonly code = "unknown_option"
  override get message() {
    return `poll ${this.pollId} has no option ${this.optionId}`
  }
}

export class AlreadyVoted extends Schema.TaggedError<AlreadyVoted>()("AlreadyVoted", { pollId: Schema.String }) {
  readonly status = 409
  readonly code = "already_voted"
  override get message() {
    return `this voter has already voted on poll ${this.pollId}`
  }
}

/**
 * A poll this instance knows was defined, whose definition its node no longer holds (the node lost its data: a
 * FLUSHALL, a restore from an older snapshot). Its rules are unknown, so it takes no votes until it is defined again.
 */
export class DefinitionLost extends Schema.TaggedError<DefinitionLost>()("DefinitionLost", { pollId: Schema.String }) {
  readonly status = 503
  readonly code = "definition_lost"
  override get message() {
    return `poll ${this.pollId} was defined, but its definition is missing from the store; it takes no votes until its organiser defines it again`
  }
}

/** A store holds at most this many poll definitions (per node); a definition past it is refused. */
export class TooManyPolls extends Schema.TaggedError<TooManyPolls>()("TooManyPolls", { limit: Schema.Number }) {
  readonly status = 409
  readonly code = "too_many_polls"
  override get message() {
    return `the store holds ${this.limit} poll definitions, as many as it may; no new poll can be defined`
  }
}

export class OrganiserKeyRequired extends Schema.TaggedError<OrganiserKeyRequired>()("OrganiserKeyRequired", {
  pollId: Schema.String
}) {
  readonly status = 401
  readonly code = "organiser_key_required"
  override get message() {
    return `closing poll ${this.pollId} needs its organiser key: Authorization: Bearer <organiser_key>`
  }
}

export class WrongOrganiserKey extends Schema.TaggedError<WrongOrganiserKey>()("WrongOrganiserKey", {
  pollId: Schema.String
}) {
  readonly status = 403
  readonly code = "wrong_organiser_key"
  override get message() {
    return `that is not the organiser key of poll ${this.pollId}`
  }
}

export class VoterRequired extends Schema.TaggedError<VoterRequired>()("VoterRequired", { pollId: Schema.String }) {
  readonly status = 400
  readonly code = "voter_required"
  override get message() {
    return `poll ${this.pollId} allows one vote per voter: send a voter_id (or the voter cookie)`
  }
}
