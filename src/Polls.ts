import { Context, DateTime, Effect, Layer, Option } from "effect"
import { createHash, randomBytes, timingSafeEqual } from "node:crypto"
import type { DefinitionLost, PollDefinition, PollDraft, PollId, StoreUnavailable } from "./Domain.js"
import { isOpen, OrganiserKeyRequired, PollExists, PollNotFound, TooManyPolls, WrongOrganiserKey } from "./Domain.js"

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
  /** One page of the defined polls, newest first, read from the store as it is now (see `ListQuery`). */
  readonly list: (query: ListQuery) => Effect.Effect<ListPage, StoreUnavailable>
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

/** Which polls a listing shows; `open` is `isOpen` at the query's `now` (a poll past its `closes_at` is closed). */
export type ListStatus = "open" | "closed" | "all"

/** A poll's place in a listing: newest first by `created_at`, polls created in the same millisecond by id, descending. */
export interface ListPosition {
  readonly createdAtMs: number
  readonly id: PollId
}

export interface ListQuery {
  readonly status: ListStatus
  /** Polls on the page at most. */
  readonly limit: number
  /**
   * The page starts with the first poll past this place (the `next` of the page before), or with the newest poll.
   * A place, not an offset: polls created since the first page do not shift it, so no page repeats or skips a poll.
   */
  readonly after?: ListPosition | undefined
  /** The time `status` is judged at. */
  readonly now: number
  /** Polls the status filter may pass over before the page ends short, with a `next` (default `MAX_SKIPPED`). */
  readonly maxSkipped?: number | undefined
}

export interface ListPage {
  readonly polls: ReadonlyArray<PollDefinition>
  /** Where the next page starts: the last poll this page looked at. Undefined when no poll is left past it. */
  readonly next: ListPosition | undefined
}

/**
 * A page passes over at most this many polls its status filter refuses, so its reads stay bounded however the open
 * and closed polls are spread; a page that reaches it ends short, and its `next` goes on from where it stopped.
 */
export const MAX_SKIPPED = 200

/** Digits of a time in a position key: any millisecond a `Date` can hold, so keys order as their times do. */
const TIME_DIGITS = 16

/**
 * A position as a text that orders as the listing does (byte by byte: a fixed-width time, then the id, whose
 * characters are ASCII), for an index that keeps text in order: Redis's sorted set by lex, a sorted array in memory.
 */
export const positionKey = (p: ListPosition): string => `${String(p.createdAtMs).padStart(TIME_DIGITS, "0")}:${p.id}`

export const positionOfKey = (key: string): ListPosition => ({
  createdAtMs: Number(key.slice(0, TIME_DIGITS)),
  id: key.slice(TIME_DIGITS + 1) as PollId
})

/** Where a definition stands; a `created_at` that is not a time (no definition this app wrote) counts as the oldest. */
export const positionOf = (poll: PollDefinition): ListPosition => {
  const ms = Date.parse(poll.created_at)
  return { createdAtMs: Number.isSafeInteger(ms) && ms >= 0 ? ms : 0, id: poll.id }
}

/** One entry of an ordered index of definitions; `poll` is undefined where the entry is stale (see the backends). */
export interface ListEntry {
  readonly key: string
  readonly poll: PollDefinition | undefined
}

/**
 * One ordered index (the memory store's, or one node's): up to `count` entries, newest first, from just past the
 * key `before` (from the newest when undefined).
 */
export type ListSource<E> = (before: string | undefined, count: number) => Effect.Effect<ReadonlyArray<ListEntry>, E>

const matches = (poll: PollDefinition, status: ListStatus, now: number) =>
  status === "all" || isOpen(poll, now) === (status === "open")

/**
 * A page merged from one or more ordered indexes, each read `limit + 1` entries at a time: without a status filter
 * one read per index serves the page and tells whether anything is left; with one, an index is read again only when
 * the merge has used up what it gave, until the page is full or `maxSkipped` polls were passed over.
 */
export const collectPage = <E>(sources: ReadonlyArray<ListSource<E>>, query: ListQuery): Effect.Effect<ListPage, E> =>
  Effect.gen(function* () {
    const chunk = query.limit + 1
    const maxSkipped = Math.max(1, query.maxSkipped ?? MAX_SKIPPED)
    const start = query.after === undefined ? undefined : positionKey(query.after)
    const streams = yield* Effect.forEach(
      sources,
      (read) => Effect.map(read(start, chunk), (entries) => ({ read, entries, at: 0, done: entries.length < chunk })),
      { concurrency: "unbounded" }
    )
    const polls: Array<PollDefinition> = []
    let skipped = 0
    let last: string | undefined
    for (;;) {
      for (const stream of streams) {
        if (stream.at < stream.entries.length || stream.done) continue
        stream.entries = yield* stream.read(stream.entries[stream.at - 1]?.key ?? start, chunk)
        stream.at = 0
        stream.done = stream.entries.length < chunk
      }
      // The same poll may be in two indexes (a copy left behind while polls move between nodes): of equal keys the
      // one with a poll goes first, and the other is then passed over.
      let from: (typeof streams)[number] | undefined
      for (const stream of streams) {
        const head = stream.entries[stream.at]
        const best = from?.entries[from.at]
        if (head === undefined) continue
        if (best === undefined || head.key > best.key || (head.key === best.key && best.poll === undefined))
          from = stream
      }
      if (from === undefined) return { polls, next: undefined }
      const entry = from.entries[from.at++]!
      if (entry.key === last) continue
      last = entry.key
      if (entry.poll !== undefined && matches(entry.poll, query.status, query.now)) {
        polls.push(entry.poll)
        if (polls.length === query.limit) break
      } else if (++skipped >= maxSkipped) break
    }
    const more = streams.some((stream) => stream.at < stream.entries.length || !stream.done)
    return { polls, next: more ? positionOfKey(last) : undefined }
  })

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
    /** Every poll's `positionKey`, ascending: new polls are mostly appended, and a page is a binary search away. */
    const order: Array<string> = []
    /** The index of the first key at or past `key`. */
    const seek = (key: string) => {
      let low = 0
      let high = order.length
      while (low < high) {
        const mid = (low + high) >>> 1
        if (order[mid]! < key) low = mid + 1
        else high = mid
      }
      return low
    }
    const source: ListSource<never> = (before, count) =>
      Effect.sync(() => {
        const entries: Array<ListEntry> = []
        for (let i = (before === undefined ? order.length : seek(before)) - 1; i >= 0 && entries.length < count; i--) {
          const key = order[i]!
          entries.push({ key, poll: polls.get(positionOfKey(key).id)?.definition })
        }
        return entries
      })
    // No cache here and no other instance: a read is always exact.
    const get = (pollId: PollId) => Effect.sync(() => Option.fromNullable(polls.get(pollId)?.definition))
    return {
      create: (poll, keyHash) =>
        Effect.suspend((): Effect.Effect<PollDefinition, PollExists | TooManyPolls> => {
          if (polls.has(poll.id)) return new PollExists({ pollId: poll.id })
          if (polls.size >= maxPolls) return new TooManyPolls({ limit: maxPolls })
          polls.set(poll.id, { definition: poll, keyHash })
          const key = positionKey(positionOf(poll))
          order.splice(seek(key), 0, key)
          return Effect.succeed(poll)
        }),
      get,
      getExact: get,
      list: (query) => collectPage([source], query),
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
