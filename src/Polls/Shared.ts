import { Effect, Option, Runtime, Schema } from "effect"
import type { PollId, StoreUnavailable } from "../Domain.js"
import { DefinitionLost, PollDefinition, PollExists, PollNotFound, TooManyPolls } from "../Domain.js"
import type { CloseError, ListEntry, ListSource, PollsShape } from "../Polls.js"
import { checkOrganiserKey, positionKey, positionOf, positionOfKey } from "../Polls.js"
import type * as RedisClient from "../RedisClient.js"

/** How long `create` waits for every instance to confirm it knows the new poll (see `Known.announced`). */
export const ACK_WAIT_MS = 1000

type Call = ReturnType<typeof RedisClient.caller>

/**
 * KEYS: the definition. Marks it closed and answers it as it is now (false: there is none); `then` is Lua run once it
 * is written (an announcement, with the decoded definition at hand as `decoded`).
 */
export const closeScript = (then = "") => `
local poll = redis.call('GET', KEYS[1])
if not poll then return false end
local decoded = cjson.decode(poll)
decoded.closed = true
local encoded = cjson.encode(decoded)
redis.call('SET', KEYS[1], encoded)
${then}
return encoded`

const decode = Schema.decodeUnknown(Schema.parseJson(PollDefinition))
/** A stored definition, or none for one that does not parse. */
export const decodeOption = Schema.decodeUnknownOption(Schema.parseJson(PollDefinition))

/** The answer of a script that defines a poll: 0, the id is taken; -1, no room; anything else goes on with `then`. */
export const written = <A, E>(
  pollId: PollId,
  maxPolls: number,
  result: number,
  then: Effect.Effect<A, E>
): Effect.Effect<A, E | PollExists | TooManyPolls> =>
  result === 0 ? new PollExists({ pollId }) : result === -1 ? new TooManyPolls({ limit: maxPolls }) : then

/**
 * One store's listing: its created index read a page at a time from `before` (`range` gets ZRANGE's max bound, lex,
 * newest first), with each entry's definition. An entry is stale (no poll) when the definition is gone (its data was
 * lost; a poll defined again has a new entry), is not the one it was made for (another `created_at`), or is not
 * `owned` here (left behind where a poll moved from, or of another group).
 */
export const listSource =
  (
    call: Call,
    range: (max: string, count: number) => Promise<ReadonlyArray<string>>,
    definitions: (ids: ReadonlyArray<string>) => Promise<ReadonlyArray<string | null | undefined>>,
    owned: (id: string) => boolean
  ): ListSource<StoreUnavailable> =>
  (before, count) =>
    call("list polls", () => range(before === undefined ? "+" : `(${before}`, count)).pipe(
      Effect.flatMap((keys) =>
        keys.length === 0
          ? Effect.succeed([])
          : Effect.map(
              call("read polls", () => definitions(keys.map((key) => positionOfKey(key).id))),
              (texts) =>
                keys.map((key, i): ListEntry => {
                  const id = positionOfKey(key).id
                  const text = texts[i]
                  const poll = text === null || text === undefined ? Option.none() : decodeOption(text)
                  const current =
                    Option.isSome(poll) &&
                    poll.value.id === id &&
                    positionKey(positionOf(poll.value)) === key &&
                    owned(id)
                  return { key, poll: current ? poll.value : undefined }
                })
            )
      )
    )

export interface KnownOptions {
  /** The poll's stored definition (JSON); null when there is none. */
  readonly definition: (pollId: PollId) => Effect.Effect<string | null, StoreUnavailable>
  /** The SHA-256 of the poll's organiser key; null when there is none. */
  readonly organiserKeyHash: (pollId: PollId) => Effect.Effect<string | null, StoreUnavailable>
  /** Marks the stored definition closed and answers it as it is now; null when there is none. */
  readonly markClosed: (pollId: PollId) => Effect.Effect<string | null, StoreUnavailable>
  /** What should have held the poll's definition, for the log line when it is gone: `node redis_7000`. */
  readonly holder: (pollId: PollId) => string
}

/** What an announcement on a definitions channel says of its poll. */
export type Announcement = "created" | "closed" | "ack"

export interface Known {
  /** The polls this instance knows are defined. */
  readonly defined: ReadonlySet<string>
  /** Adds the ids an index read names; a read that fails changes nothing (the next resync tries again). */
  readonly learn: (ids: Effect.Effect<ReadonlyArray<string>, StoreUnavailable>) => Effect.Effect<void>
  /** An announcement heard; `confirm` publishes this instance's ack of a created poll. */
  readonly heard: (kind: Announcement, pollId: string, confirm: () => Effect.Effect<unknown, StoreUnavailable>) => void
  /**
   * Runs a `create`'s write, whose answer is 1 + the number of connections its announcement reached (one per
   * instance), and answers once all of them have confirmed, or after ACK_WAIT_MS.
   */
  readonly announced: <E>(poll: PollDefinition, write: Effect.Effect<number, E>) => Effect.Effect<PollDefinition, E>
  readonly shape: Pick<PollsShape, "get" | "getExact" | "mayBeDefined" | "onChanged" | "close">
}

/**
 * What the two Redis backends of the definitions share. Which polls are defined: loaded at start, told of new ones
 * over pub/sub, and re-read every resync in case a message was missed while a node was away. Every instance confirms
 * each announcement (an ack beside it), and `create` answers only when all the instances the announcement reached
 * have confirmed: after a 201, no instance takes the poll for an ad-hoc one. (An instance cut off from the node does
 * not confirm; `create` gives up waiting after ACK_WAIT_MS, and that instance learns of the poll when it resyncs.)
 */
export const makeKnown = (options: KnownOptions): Effect.Effect<Known> =>
  Effect.map(Effect.runtime<never>(), (runtime) => {
    const runFork = Runtime.runFork(runtime)
    const defined = new Set<string>()
    const acks = new Map<string, () => void>()
    const changeListeners: Array<(pollId: PollId) => void> = []
    const parse = (pollId: PollId, text: string) =>
      decode(text).pipe(Effect.orDieWith((e) => new Error(`stored definition of poll ${pollId} is malformed: ${e}`)))

    // Ids whose definition went missing, each logged once; bounded by the definitions this instance has seen.
    const lost = new Set<string>()
    /**
     * The store has no definition of the poll: it was never defined, or (a poll this instance saw defined, which
     * cannot turn ad hoc) its node lost its data, and with it the poll's rules.
     */
    const missing = (pollId: PollId): Effect.Effect<Option.Option<PollDefinition>, DefinitionLost> => {
      if (!defined.has(pollId)) return Effect.succeedNone
      if (lost.has(pollId)) return new DefinitionLost({ pollId })
      lost.add(pollId)
      return Effect.zipRight(
        Effect.logError(`poll ${pollId} was defined, but ${options.holder(pollId)} has no definition of it`),
        new DefinitionLost({ pollId })
      )
    }
    const read = (pollId: PollId) =>
      options
        .definition(pollId)
        .pipe(Effect.flatMap((text) => (text === null ? missing(pollId) : Effect.asSome(parse(pollId, text)))))

    return {
      defined,
      learn: (ids) =>
        ids.pipe(
          Effect.tap((ids) => ids.forEach((id) => defined.add(id))),
          Effect.ignore
        ),
      heard: (kind, pollId, confirm) => {
        if (kind === "ack") return acks.get(pollId)?.()
        if (kind === "created") {
          defined.add(pollId)
          runFork(Effect.ignore(confirm()))
        }
        for (const listener of changeListeners) listener(pollId as PollId)
      },
      announced: (poll, write) => {
        let confirmed = 0
        let expected = Infinity
        let wake: (() => void) | undefined
        acks.set(poll.id, () => {
          if (++confirmed >= expected) wake?.()
        })
        const allConfirmed = Effect.async<void>((resume) => {
          if (confirmed >= expected) return resume(Effect.void)
          const timer = setTimeout(() => resume(Effect.void), ACK_WAIT_MS)
          wake = () => {
            clearTimeout(timer)
            resume(Effect.void)
          }
        })
        return write.pipe(
          Effect.flatMap((reached) => {
            defined.add(poll.id)
            lost.delete(poll.id)
            expected = reached - 1
            return Effect.as(allConfirmed, poll)
          }),
          Effect.ensuring(Effect.sync(() => acks.delete(poll.id)))
        )
      },
      shape: {
        get: (pollId) => (defined.has(pollId) ? read(pollId) : Effect.succeedNone),
        getExact: read,
        mayBeDefined: (pollId) => defined.has(pollId),
        onChanged: (listener) => void changeListeners.push(listener),
        close: (pollId, key) =>
          options.organiserKeyHash(pollId).pipe(
            Effect.flatMap((hash): Effect.Effect<void, CloseError> =>
              hash === null
                ? // No hash: no such poll, or one defined before polls had keys (which nobody can close but an operator).
                  Effect.flatMap(read(pollId), (poll): Effect.Effect<void, CloseError> =>
                    Option.isNone(poll) ? new PollNotFound({ pollId }) : checkOrganiserKey(pollId, undefined, key)
                  )
                : checkOrganiserKey(pollId, hash, key)
            ),
            Effect.zipRight(options.markClosed(pollId)),
            Effect.flatMap((text): Effect.Effect<PollDefinition, CloseError> =>
              text !== null ? parse(pollId, text) : Effect.zipRight(missing(pollId), new PollNotFound({ pollId }))
            )
          )
      }
    }
  })
