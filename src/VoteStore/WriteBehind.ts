import { Duration, Effect, Exit, Layer, Schedule } from "effect"
import type { Batch, OptionId, PollId } from "../Domain.js"
import { addCounts, BufferFull, MAX_OPTIONS_PER_POLL, TooManyOptions } from "../Domain.js"
import type { VoteStoreShape } from "../VoteStore.js"
import { InnerStore, VoteStore } from "../VoteStore.js"

export interface WriteBehindOptions {
  readonly flushInterval: Duration.DurationInput
  /**
   * Cap on buffered (poll, option) entries across all partitions. Half of it triggers an early flush; at the cap a vote
   * that would add a new entry is refused with 503 rather than grow memory without bound.
   */
  readonly maxEntries?: number
  /** How long the flush on shutdown may take before it gives up and reports what is left. */
  readonly shutdownDeadline?: Duration.DurationInput
  /** Prefix of batch ids; unique per process so two instances never share a batch id. */
  readonly instanceId?: string
}

type Counter = Map<PollId, Map<OptionId, number>>

/** One queue per store partition (a shard): an outage of one partition never holds up the others. */
interface Partition {
  readonly name: string
  pending: Counter
  /** Handed to the store and not yet confirmed; retried under the same id until it is. */
  inflight: (Batch & { readonly votes: number; readonly entries: number }) | undefined
  pendingVotes: number
  pendingEntries: number
}

const addTo = (counter: Counter, pollId: PollId, optionId: OptionId, n: number): boolean => {
  let options = counter.get(pollId)
  if (options === undefined) {
    options = new Map()
    counter.set(pollId, options)
  }
  const before = options.get(optionId)
  options.set(optionId, (before ?? 0) + n)
  return before === undefined
}

const retryPolicy = Schedule.exponential(Duration.millis(100)).pipe(Schedule.intersect(Schedule.recurs(2)))

export const make = Effect.fn("VoteStore.writeBehind.make")(function* (
  inner: VoteStoreShape,
  options: WriteBehindOptions
) {
  const maxEntries = options.maxEntries ?? 200_000
  const instanceId = options.instanceId ?? crypto.randomUUID()
  const partitions = new Map<string, Partition>()
  let sequence = 0
  let bufferedEntries = 0

  const partitionFor = (pollId: PollId): Partition => {
    const name = inner.partitionOf(pollId)
    let partition = partitions.get(name)
    if (partition === undefined) {
      partition = { name, pending: new Map(), inflight: undefined, pendingVotes: 0, pendingEntries: 0 }
      partitions.set(name, partition)
    }
    return partition
  }

  const bufferedVotes = () => {
    let votes = 0
    for (const p of partitions.values()) votes += p.pendingVotes + (p.inflight?.votes ?? 0)
    return votes
  }

  /** Options a poll is known to have, in the store or in this buffer; refreshed from the store on a miss. */
  const knownOptions = new Map<PollId, Set<string>>()
  const rememberOptions = (pollId: PollId, optionIds: Iterable<string>) => {
    knownOptions.delete(pollId)
    if (knownOptions.size >= maxEntries) knownOptions.delete(knownOptions.keys().next().value!)
    const known = new Set(optionIds)
    knownOptions.set(pollId, known)
    return known
  }

  const bufferedOptions = (partition: Partition, pollId: PollId): Array<string> => [
    ...(partition.pending.get(pollId)?.keys() ?? []),
    ...(partition.inflight?.increments.get(pollId)?.keys() ?? [])
  ]

  const checkOption = Effect.fn("VoteStore.writeBehind.checkOption")(function* (
    partition: Partition,
    pollId: PollId,
    optionId: OptionId
  ) {
    if (knownOptions.get(pollId)?.has(optionId)) return
    // Unknown here: learn the poll's options from the store. If the store is down, judge by what this buffer holds.
    const stored = yield* inner.results(pollId).pipe(
      Effect.map((r) => Object.keys(r.counts)),
      Effect.orElseSucceed(() => [])
    )
    const known = rememberOptions(pollId, [...stored, ...bufferedOptions(partition, pollId)])
    if (!known.has(optionId) && known.size >= MAX_OPTIONS_PER_POLL) return yield* new TooManyOptions({ pollId })
    known.add(optionId)
  })

  const flushPartition = Effect.fn("VoteStore.writeBehind.flushPartition")(function* (partition: Partition) {
    if (partition.inflight === undefined && partition.pendingEntries > 0) {
      partition.inflight = {
        id: `${instanceId}-${++sequence}`,
        increments: partition.pending,
        votes: partition.pendingVotes,
        entries: partition.pendingEntries
      }
      partition.pending = new Map()
      partition.pendingVotes = 0
      partition.pendingEntries = 0
    }
    const batch = partition.inflight
    if (batch === undefined) return { partition: partition.name, votes: 0, polls: 0, ok: true }
    const exit = yield* inner.applyBatch(batch).pipe(Effect.retry(retryPolicy), Effect.exit)
    if (Exit.isSuccess(exit)) {
      partition.inflight = undefined
      bufferedEntries -= batch.entries
    } else {
      yield* Effect.logWarning(
        `flush of batch ${batch.id} to ${partition.name} failed, kept for retry: ${exit.cause.toString().split("\n")[0]}`
      )
    }
    return { partition: partition.name, votes: batch.votes, polls: batch.increments.size, ok: Exit.isSuccess(exit) }
  })

  const lock = yield* Effect.makeSemaphore(1)

  /** Flush every partition once, concurrently. Returns the votes confirmed and the votes still buffered. */
  const flushOnce = lock.withPermits(1)(
    Effect.gen(function* () {
      const outcomes = yield* Effect.forEach(partitions.values(), flushPartition, { concurrency: "unbounded" })
      const flushed = outcomes.filter((o) => o.ok).reduce((sum, o) => sum + o.votes, 0)
      const polls = outcomes.filter((o) => o.ok).reduce((sum, o) => sum + o.polls, 0)
      const failed = outcomes.filter((o) => !o.ok).map((o) => o.partition)
      const remaining = bufferedVotes()
      if (flushed > 0 || failed.length > 0) {
        yield* Effect.logInfo(
          `flush: ${flushed} votes over ${polls} polls applied; ${remaining} still buffered` +
            (failed.length > 0 ? `; failed: ${failed.join(", ")}` : "")
        )
      }
      return { flushed, remaining }
    })
  )

  /** Flush until nothing is buffered, so votes that arrived during one round go out in the next. */
  const flushAll = Effect.gen(function* () {
    for (;;) {
      const { remaining } = yield* flushOnce
      if (remaining === 0) return 0
      const stuck = [...partitions.values()].some((p) => p.inflight !== undefined)
      if (stuck) return remaining
    }
  })

  yield* flushOnce.pipe(Effect.schedule(Schedule.spaced(options.flushInterval)), Effect.forkScoped)

  yield* Effect.addFinalizer(() =>
    flushAll.pipe(
      Effect.timeout(options.shutdownDeadline ?? Duration.seconds(5)),
      Effect.catchAll(() => Effect.succeed(bufferedVotes())),
      Effect.flatMap((left) =>
        left === 0
          ? Effect.logInfo("shutdown flush complete: nothing left buffered")
          : Effect.logError(`shutdown flush incomplete: ${left} accepted votes could not be written to the store`)
      )
    )
  )

  const scope = yield* Effect.scope
  let earlyFlushRunning = false
  const earlyFlush = Effect.suspend(() => {
    if (earlyFlushRunning) return Effect.void
    earlyFlushRunning = true
    return flushOnce.pipe(
      Effect.ensuring(Effect.sync(() => (earlyFlushRunning = false))),
      Effect.forkIn(scope),
      Effect.asVoid
    )
  })

  const store: VoteStoreShape = {
    vote: Effect.fn("VoteStore.writeBehind.vote")(function* (pollId: PollId, optionId: OptionId) {
      const partition = partitionFor(pollId)
      const isNewEntry = partition.pending.get(pollId)?.has(optionId) !== true
      if (isNewEntry && bufferedEntries >= maxEntries) {
        yield* earlyFlush
        return yield* new BufferFull({ pending: bufferedVotes() })
      }
      yield* checkOption(partition, pollId, optionId)
      if (addTo(partition.pending, pollId, optionId, 1)) {
        partition.pendingEntries++
        bufferedEntries++
      }
      partition.pendingVotes++
      if (bufferedEntries >= maxEntries / 2) yield* earlyFlush
    }),
    results: Effect.fn("VoteStore.writeBehind.results")(function* (pollId: PollId) {
      const stored = yield* inner.results(pollId)
      const partition = partitions.get(inner.partitionOf(pollId))
      if (partition === undefined) return stored
      const counts = addCounts({ ...stored.counts }, partition.pending.get(pollId))
      addCounts(counts, partition.inflight?.increments.get(pollId))
      return { counts, servedVia: stored.servedVia }
    }),
    applyBatch: inner.applyBatch,
    partitionOf: inner.partitionOf,
    health: inner.health.pipe(Effect.map((h) => ({ ...h, pendingVotes: h.pendingVotes + bufferedVotes() })))
  }
  return store
})

export const layer = (options: WriteBehindOptions): Layer.Layer<VoteStore, never, InnerStore> =>
  Layer.scoped(
    VoteStore,
    Effect.flatMap(InnerStore, (inner) => make(inner, options))
  )
