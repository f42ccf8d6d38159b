import { Context, DateTime, Effect, Layer, Option } from "effect"
import { createHash, randomBytes, timingSafeEqual } from "node:crypto"
import type { DefinitionLost, PollDefinition, PollDraft, PollId, StoreUnavailable } from "./Domain.js"
import { OrganiserKeyRequired, PollExists, PollNotFound, TooManyPolls, WrongOrganiserKey } from "./Domain.js"

export type CloseError = PollNotFound | OrganiserKeyRequired | WrongOrganiserKey | StoreUnavailable | DefinitionLost

/** Poll definitions, each with the hash of its organiser's key, kept beside the counts (same node, same hash tag). */
export interface PollsShape {
  /** Defines the poll; the store keeps `organiserKeyHash` (see `organiserKey`), never the key. */
  readonly create: (
    poll: PollDefinition,
    organiserKeyHash: string
  ) => Effect.Effect<PollDefinition, PollExists | TooManyPolls | StoreUnavailable>
  /** A poll's definition as a reader sees it: a cache on the way may answer (see `Polls/Cached.ts`). */
  readonly get: (pollId: PollId) => Effect.Effect<Option.Option<PollDefinition>, StoreUnavailable | DefinitionLost>
  /** The definition as the store holds it now, past any cache: live streams read this, so a change made elsewhere is not hidden. */
  readonly getExact: (pollId: PollId) => Effect.Effect<Option.Option<PollDefinition>, StoreUnavailable | DefinitionLost>
  /** Closes the poll for whoever shows its organiser key. */
  readonly close: (pollId: PollId, organiserKey: string | undefined) => Effect.Effect<PollDefinition, CloseError>
  /**
   * False when this instance knows the poll is not defined, without asking anyone (`get` may still find it: a
   * definition announced a moment ago). Lets the definition cache stay out of the way of ad-hoc votes.
   */
  readonly mayBeDefined: (pollId: PollId) => boolean
  /**
   * Calls `listener` with each poll whose definition another instance created or closed (a cache drops its copy).
   * A backend no other instance shares never calls it.
   */
  readonly onChanged: (listener: (pollId: PollId) => void) => void
}

/** A new organiser key, shown once to whoever defines the poll, and the hash the store keeps of it. */
export const organiserKey = () => {
  const key = randomBytes(24).toString("base64url")
  return { key, hash: hashKey(key) }
}

const hashKey = (key: string) => createHash("sha256").update(key).digest("hex")

/** Whether `key` is the one whose hash is `hash`, in time that does not depend on where they differ. */
export const checkOrganiserKey = (
  pollId: PollId,
  hash: string | undefined,
  key: string | undefined
): Effect.Effect<void, OrganiserKeyRequired | WrongOrganiserKey> => {
  if (key === undefined || key === "") return new OrganiserKeyRequired({ pollId })
  // Both sides are SHA-256 digests, so the comparison takes the same time whatever was sent.
  const given = Buffer.from(hashKey(key), "hex")
  const stored = Buffer.from(hash ?? "", "hex")
  return stored.length === given.length && timingSafeEqual(stored, given)
    ? Effect.void
    : new WrongOrganiserKey({ pollId })
}

/** The poll definitions the app reads. */
export class Polls extends Context.Tag("livepoll/Polls")<Polls, PollsShape>() {}

/** The definitions a decorator (the definitions cache) wraps. */
export class InnerPolls extends Context.Tag("livepoll/InnerPolls")<InnerPolls, PollsShape>() {}

/** Re-expose a definitions layer as the inner one of the next decorator. */
export const asInner = <E, R>(layer: Layer.Layer<Polls, E, R>): Layer.Layer<InnerPolls, E, R> =>
  Layer.effect(InnerPolls, Polls).pipe(Layer.provide(layer))

export const define = (draft: PollDraft, id: PollId, now: Date): PollDefinition => ({
  id,
  question: draft.question,
  options: draft.options,
  one_vote_per_voter: draft.one_vote_per_voter,
  closes_at: draft.closes_at === undefined ? null : DateTime.formatIso(draft.closes_at),
  closed: false,
  created_at: now.toISOString()
})

/** `maxPolls`: definitions held at most (`MAX_POLLS`). */
export const makeMemory = (maxPolls: number) =>
  Effect.sync((): PollsShape => {
    const polls = new Map<PollId, { definition: PollDefinition; readonly keyHash: string }>()
    // No cache here and no other instance: a read is always exact.
    const get = (pollId: PollId) => Effect.sync(() => Option.fromNullable(polls.get(pollId)?.definition))
    return {
      create: (poll, keyHash) =>
        Effect.suspend((): Effect.Effect<PollDefinition, PollExists | TooManyPolls> => {
          if (polls.has(poll.id)) return new PollExists({ pollId: poll.id })
          if (polls.size >= maxPolls) return new TooManyPolls({ limit: maxPolls })
          polls.set(poll.id, { definition: poll, keyHash })
          return Effect.succeed(poll)
        }),
      get,
      getExact: get,
      mayBeDefined: (pollId) => polls.has(pollId),
      onChanged: () => {},
      close: (pollId, key) =>
        Effect.suspend((): Effect.Effect<PollDefinition, CloseError> => {
          const poll = polls.get(pollId)
          if (poll === undefined) return new PollNotFound({ pollId })
          return Effect.map(
            checkOrganiserKey(pollId, poll.keyHash, key),
            () => (poll.definition = { ...poll.definition, closed: true })
          )
        })
    }
  })

export const layerMemory = (maxPolls: number): Layer.Layer<Polls> => Layer.effect(Polls, makeMemory(maxPolls))
