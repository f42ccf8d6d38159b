import { Cause, Clock, Duration, Effect, Exit, Layer, Runtime, Schedule } from "effect"
import type { Counts, Health, OptionId, PollId, PollResults, VoteError } from "../Domain.js"
import { StoreUnavailable } from "../Domain.js"
import * as Journal from "./Journal.js"
import type { JournalShape } from "./Journal.js"
import { addCounts, BufferFull, copyCounts, MAX_OPTIONS_PER_POLL, TooManyOptions } from "../Domain.js"
import type { ExactResults, VoteStoreShape } from "../VoteStore.js"
import { InnerStore, VoteStore } from "../VoteStore.js"
import { type FlushRecorder, Metrics } from "../Metrics.js"
import { MAX_POLLS_PER_BATCH, type Batch, type Increments } from "../VoteStore.js"

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
  /** Polls per batch; a larger pending set goes out as several batches, one after the other. */
  readonly maxPollsPerBatch?: number
  /**
   * Retries of a failed batch within one flush round (`FLUSH_RETRIES`): the first 100 ms after the failure, each wait
   * twice the last. After the last one the round stops, and the batch waits for the next round.
   */
  readonly flushRetries?: number
  /**
   * When the option reads of the polls first met since the last call go out, as one read (`optionsOf`). By default
   * once the event loop has taken every request of this turn (`setImmediate`), so a burst of first votes on many
   * polls shares a read; a caller on virtual time passes one that runs at once.
   */
  readonly gatherReads?: (read: () => void) => void
}

/** The default of `FLUSH_RETRIES`. */
export const FLUSH_RETRIES = 2

type Counter = Map<PollId, Map<OptionId, number>>

/** One queue per store partition (a shard): an outage of one partition never holds up the others. */
interface Partition {
  readonly name: string
  /** This partition's (node's) flush metrics. */
  readonly flushed: FlushRecorder
  pending: Counter
  /** Handed to the store and not yet confirmed; retried under the same id until it is. */
  inflight: (Batch & { readonly votes: number; readonly entries: number }) | undefined
  /** Whether the journal holds the in-flight batch; it is sent only once it does. */
  inflightJournaled: boolean
  pendingVotes: number
  pendingEntries: number
  /** Bumped whenever pending is sealed into a batch or a batch is confirmed; a read that spans a change retries. */
  epoch: number
  /** Flushes that failed since the last one that succeeded (a round stops at its first failure: one per round). */
  failedFlushes: number
  /** When the first of those failed; undefined while the last flush succeeded. */
  failingSince: number | undefined
  lastFailure: { readonly at: number; readonly error: string } | undefined
  lastSuccess: number | undefined
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

/**
 * A read that raced a flush is read again only this long after it began: each store read is bounded near 1.7 s
 * (the command time-out and its answer's way back), so one more still ends within the 2 s a request is answered in.
 */
export const REREAD_WITHIN_MS = 300

const describe = (error: unknown) => (error instanceof Error ? error.message : String(error))

/**
 * Runs a background step so that its failure, or a defect, is logged in one line and ends nothing: the flush loop
 * must outlive any one bad round (a full disk, a store refusing writes). Interruption still stops it.
 */
const survive = (what: string) => (effect: Effect.Effect<unknown>) =>
  Effect.catchAllCause(effect, (cause) =>
    Cause.isInterruptedOnly(cause)
      ? Effect.failCause(cause)
      : Effect.logWarning(`${what} failed, will try again: ${describe(Cause.squash(cause))}`)
  )

/** A plain read says nothing about batches. */
const NONE_APPLIED: ReadonlyArray<string> = []

const retryPolicy = (retries: number) =>
  Schedule.exponential(Duration.millis(100)).pipe(Schedule.intersect(Schedule.recurs(retries)))

const countOf = (increments: Increments) => {
  let votes = 0
  let entries = 0
  for (const options of increments.values()) {
    entries += options.size
    for (const n of options.values()) votes += n
  }
  return { votes, entries }
}

export const make = Effect.fn("VoteStore.writeBehind.make")(function* (
  inner: VoteStoreShape,
  options: WriteBehindOptions,
  journal: JournalShape = Journal.none
) {
  const maxEntries = options.maxEntries ?? 200_000
  const maxPollsPerBatch = options.maxPollsPerBatch ?? MAX_POLLS_PER_BATCH
  const instanceId = options.instanceId ?? crypto.randomUUID()
  const retries = retryPolicy(options.flushRetries ?? FLUSH_RETRIES)
  const gatherReads = options.gatherReads ?? ((read: () => void) => void setImmediate(read))
  const runFork = Runtime.runFork(yield* Effect.runtime<never>())
  const metrics = yield* Metrics
  const clock = yield* Effect.clock
  const partitions = new Map<string, Partition>()
  let sequence = 0
  let bufferedEntries = 0

  const partitionFor = (pollId: PollId): Partition => partitionByName(inner.partitionOf(pollId))
  const partitionByName = (name: string): Partition => {
    let partition = partitions.get(name)
    if (partition === undefined) {
      partition = {
        name,
        flushed: metrics.flushes(name),
        pending: new Map(),
        inflight: undefined,
        pendingVotes: 0,
        pendingEntries: 0,
        epoch: 0,
        inflightJournaled: true,
        failedFlushes: 0,
        failingSince: undefined,
        lastFailure: undefined,
        lastSuccess: undefined
      }
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

  /**
   * The stored options of polls this instance has not met yet, read together: every first vote of one gathering
   * waits on the same read (at most MAX_POLLS_PER_BATCH polls each). If the store is down, the answer is empty and the
   * vote is judged by what this buffer holds.
   */
  const waiting = new Map<PollId, Array<(stored: ReadonlyArray<string>) => void>>()
  const readWaiting = () => {
    const polls = [...waiting]
    waiting.clear()
    for (let i = 0; i < polls.length; i += maxPollsPerBatch) {
      const part = polls.slice(i, i + maxPollsPerBatch)
      runFork(
        Effect.map(
          Effect.orElseSucceed(
            inner.optionsOf(part.map(([pollId]) => pollId)),
            (): ReadonlyMap<PollId, ReadonlyArray<string>> => new Map()
          ),
          (found) => {
            for (const [pollId, resumes] of part) for (const resume of resumes) resume(found.get(pollId) ?? [])
          }
        )
      )
    }
  }
  const storedOptions = (pollId: PollId) =>
    Effect.async<ReadonlyArray<string>>((resume) => {
      const resumes = waiting.get(pollId)
      const wake = (stored: ReadonlyArray<string>) => resume(Effect.succeed(stored))
      if (resumes !== undefined) return void resumes.push(wake)
      const first = waiting.size === 0
      waiting.set(pollId, [wake])
      if (first) gatherReads(readWaiting)
    })

  // Not an Effect.fn: it runs on the first vote for each poll, and a span captures a stack trace per call.
  const checkOption = (partition: Partition, pollId: PollId, optionId: OptionId) =>
    storedOptions(pollId).pipe(
      Effect.flatMap((stored) => {
        const known = rememberOptions(pollId, [...stored, ...bufferedOptions(partition, pollId)])
        if (!known.has(optionId) && known.size >= MAX_OPTIONS_PER_POLL) return new TooManyOptions({ pollId })
        known.add(optionId)
        return Effect.void
      })
    )

  /**
   * Moves up to `maxPollsPerBatch` polls out of pending into a new in-flight batch. Pending is replaced, never
   * mutated, so a reader holding the old map sees a consistent set.
   */
  const seal = (partition: Partition) => {
    let increments: Counter = partition.pending
    let rest: Counter = new Map()
    if (partition.pending.size > maxPollsPerBatch) {
      increments = new Map()
      for (const [pollId, options] of partition.pending) {
        if (increments.size < maxPollsPerBatch) increments.set(pollId, options)
        else rest.set(pollId, options)
      }
    }
    const { votes, entries } = countOf(increments)
    partition.inflight = { id: `${instanceId}-${++sequence}`, increments, votes, entries }
    partition.inflightJournaled = false
    partition.pending = rest
    partition.pendingVotes -= votes
    partition.pendingEntries -= entries
    partition.epoch++
  }

  /** Sends the partition's in-flight batch (sealing one from pending if there is none). */
  const flushPartition = Effect.fn("VoteStore.writeBehind.flushPartition")(function* (partition: Partition) {
    if (partition.inflight === undefined && partition.pendingEntries > 0) seal(partition)
    const batch = partition.inflight
    if (batch === undefined) return { partition: partition.name, votes: 0, polls: 0, ok: true }
    // Once sent, a batch must be replayed under its own id after a crash, never as loose votes under a new one.
    const journaled = partition.inflightJournaled
      ? Effect.void
      : journal.sealed(partition.name, batch).pipe(Effect.tap(() => (partition.inflightJournaled = true)))
    const started = performance.now()
    let attempts = 0
    const exit = yield* journaled.pipe(
      Effect.zipRight(
        Effect.suspend(() => {
          attempts++
          return inner.applyBatch(batch)
        }).pipe(
          Effect.tapError((e) => Effect.logWarning(`flush of batch ${batch.id} to ${partition.name}: ${e.message}`)),
          Effect.retry(retries)
        )
      ),
      Effect.exit
    )
    const now = yield* Clock.currentTimeMillis
    partition.flushed.batch({
      ok: Exit.isSuccess(exit),
      seconds: (performance.now() - started) / 1000,
      retries: Math.max(0, attempts - 1),
      votes: batch.votes
    })
    if (Exit.isSuccess(exit)) {
      partition.inflight = undefined
      partition.epoch++
      bufferedEntries -= batch.entries
      partition.lastSuccess = now
      partition.failingSince = undefined
      partition.failedFlushes = 0
      // Only once the journal can no longer send it again may the store forget the batch (a failed record leaves
      // the markers to expire: a replay after a crash must still find them).
      const durable = yield* Effect.isSuccess(journal.confirmed(batch.id))
      if (durable && inner.forgetBatch !== undefined) yield* Effect.ignore(inner.forgetBatch(batch))
    } else {
      const error = describe(Cause.squash(exit.cause))
      partition.lastFailure = { at: now, error }
      partition.failingSince ??= now
      partition.failedFlushes++
      yield* Effect.logWarning(`flush of batch ${batch.id} to ${partition.name} failed, kept for retry: ${error}`)
    }
    return { partition: partition.name, votes: batch.votes, polls: batch.increments.size, ok: Exit.isSuccess(exit) }
  })

  /**
   * Flushes what the partition held when the round began (an unconfirmed batch, then pending, in batches of at
   * most `maxPollsPerBatch` polls), stopping at a failed batch. Votes that arrive meanwhile wait for the next
   * round: chasing them would turn a busy buffer into a stream of tiny batches, one round trip every few votes.
   */
  const drainPartition = (partition: Partition) =>
    Effect.gen(function* () {
      const total = { partition: partition.name, votes: 0, polls: 0, ok: true }
      let left = partition.pending.size + (partition.inflight?.increments.size ?? 0)
      while (total.ok && left > 0 && (partition.inflight !== undefined || partition.pendingEntries > 0)) {
        const outcome = yield* flushPartition(partition)
        total.votes += outcome.votes
        total.polls += outcome.polls
        total.ok = outcome.ok
        left -= outcome.polls
      }
      return total
    })

  const journalState = () => ({
    pending: [...partitions.values()].map((p) => p.pending),
    batches: [...partitions.values()].flatMap((p) =>
      p.inflight === undefined ? [] : [{ partition: p.name, batch: p.inflight }]
    )
  })

  const recovered = yield* journal.recover
  for (const [pollId, options] of recovered.pending) {
    const partition = partitionFor(pollId)
    for (const [optionId, n] of options) {
      if (addTo(partition.pending, pollId, optionId, n)) {
        partition.pendingEntries++
        bufferedEntries++
      }
      partition.pendingVotes += n
    }
  }
  for (const { partition: name, batch } of recovered.batches) {
    const partition = partitionByName(name)
    if (partition.inflight !== undefined) {
      // At most one batch per partition is ever in flight, so this only happens if the journal was edited by hand.
      return yield* Effect.dieMessage(`journal holds two unconfirmed batches for ${name}`)
    }
    const { votes, entries } = countOf(batch.increments)
    partition.inflight = { ...batch, votes, entries }
    bufferedEntries += entries
  }
  if (recovered.pending.size > 0 || recovered.batches.length > 0) {
    yield* Effect.logInfo(
      `journal replayed: ${bufferedVotes()} accepted votes not yet in the store, ${recovered.batches.length} batches to resend`
    )
  }
  yield* journal.compact(journalState).pipe(survive("journal compaction"))

  const lock = yield* Effect.makeSemaphore(1)

  // What the buffer holds, per node, read at each scrape; no longer once the buffer is gone.
  const unregister = metrics.buffered(maxEntries, () =>
    [...partitions.values()].map((p) => ({
      node: p.name,
      votes: p.pendingVotes + (p.inflight?.votes ?? 0),
      entries: p.pendingEntries + (p.inflight?.entries ?? 0)
    }))
  )
  yield* Effect.addFinalizer(() => Effect.sync(unregister))

  /** Flush every partition once, concurrently. Returns the votes confirmed and the votes still buffered. */
  const flushOnce = lock.withPermits(1)(
    Effect.gen(function* () {
      const outcomes = yield* Effect.forEach(partitions.values(), drainPartition, { concurrency: "unbounded" })
      const flushed = outcomes.filter((o) => o.ok).reduce((sum, o) => sum + o.votes, 0)
      const polls = outcomes.filter((o) => o.ok).reduce((sum, o) => sum + o.polls, 0)
      const failed = outcomes.filter((o) => !o.ok).map((o) => o.partition)
      const remaining = bufferedVotes()
      yield* journal.compact(journalState)
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

  yield* flushOnce.pipe(
    survive("flush round"),
    Effect.schedule(Schedule.spaced(options.flushInterval)),
    Effect.forkScoped
  )

  yield* Effect.addFinalizer(() =>
    flushAll.pipe(
      Effect.timeout(options.shutdownDeadline ?? Duration.seconds(5)),
      Effect.catchAllCause(() => Effect.succeed(bufferedVotes())),
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
      survive("early flush"),
      Effect.ensuring(Effect.sync(() => (earlyFlushRunning = false))),
      Effect.forkIn(scope),
      Effect.asVoid
    )
  })

  /**
   * A vote enters the buffer only once its journal line is durable, so a vote refused with 503 is never counted:
   * the journal calls `count` at that moment (a compaction then sees it), or else it runs when the append succeeds.
   * The cap was checked before the append, so votes whose appends are in flight together may pass it by their number.
   */
  const accept = (partition: Partition, pollId: PollId, optionId: OptionId) => {
    let counted = false
    const count = () => {
      if (counted) return
      counted = true
      if (addTo(partition.pending, pollId, optionId, 1)) {
        partition.pendingEntries++
        bufferedEntries++
      }
      partition.pendingVotes++
    }
    return Effect.flatMap(journal.append(pollId, optionId, count), () => {
      count()
      return bufferedEntries >= maxEntries / 2 ? earlyFlush : Effect.void
    })
  }

  /**
   * The store's counts plus what this buffer holds for the poll, exactly: the in-flight batch is added unless the
   * store reports it applied. `asked`: the caller's own batch ids, for an exact read; undefined, a cache below may
   * answer (unless the in-flight batch holds the poll: only the store can say whether it has it). `answer` shapes
   * the result. Plain steps, not a generator: this runs on every read.
   */
  const readBuffered = <A>(
    partition: Partition,
    pollId: PollId,
    asked: ReadonlyArray<string> | undefined,
    answer: (counts: Counts, servedVia: string, applied: ReadonlyArray<string>) => A,
    attempt: number,
    startedAt: number
  ): Effect.Effect<A, StoreUnavailable> => {
    const { epoch, pending, inflight } = partition
    const ours = inflight?.increments.has(pollId) === true
    const read: Effect.Effect<PollResults | ExactResults, StoreUnavailable> =
      asked === undefined && !ours
        ? inner.results(pollId)
        : inner.exactResults(pollId, ours ? [inflight!.id, ...(asked ?? [])] : asked!)
    return Effect.flatMap(read, (stored) => {
      // A batch sealed or confirmed while the store was being read could be counted twice or not at all: read again,
      // while another read still fits in the time a request is answered within; past that, or after five, a 503.
      if (partition.epoch !== epoch) {
        return attempt < 5 && clock.unsafeCurrentTimeMillis() - startedAt <= REREAD_WITHIN_MS
          ? readBuffered(partition, pollId, asked, answer, attempt + 1, startedAt)
          : Effect.fail(new StoreUnavailable({ node: partition.name, reason: "every read raced a flush; retry" }))
      }
      const applied = "appliedBatches" in stored ? stored.appliedBatches : NONE_APPLIED
      const counts = addCounts(copyCounts(stored.counts), pending.get(pollId))
      if (ours && !applied.includes(inflight!.id)) addCounts(counts, inflight!.increments.get(pollId))
      return Effect.succeed(answer(counts, stored.servedVia, applied))
    })
  }
  const plainAnswer = (counts: Counts, servedVia: string): PollResults => ({ counts, servedVia })

  const intervalMs = Duration.toMillis(options.flushInterval)
  const ago = (now: number, at: number | undefined) => (at === undefined ? null : now - at)
  /** One entry per node of the inner store, and per partition no node is named after. */
  const flushHealth = (inner: Health, now: number): NonNullable<Health["flushes"]> =>
    [...new Set([...inner.nodes.map((n) => n.name), ...partitions.keys()])].map((node) => {
      const p = partitions.get(node)
      return {
        node,
        pendingVotes: p === undefined ? 0 : p.pendingVotes + (p.inflight?.votes ?? 0),
        failing:
          p !== undefined &&
          (p.failedFlushes >= 2 || (p.failingSince !== undefined && now - p.failingSince > 2 * intervalMs)),
        failingSinceMsAgo: ago(now, p?.failingSince),
        lastFailureMsAgo: ago(now, p?.lastFailure?.at),
        lastSuccessMsAgo: ago(now, p?.lastSuccess),
        lastError: p?.lastFailure?.error ?? null
      }
    })

  const store: VoteStoreShape = {
    // The hot path: plain synchronous steps, no generator and no span (see the README's "Performance").
    vote: (pollId: PollId, optionId: OptionId) =>
      Effect.suspend((): Effect.Effect<void, VoteError> => {
        const partition = partitionFor(pollId)
        const isNewEntry = partition.pending.get(pollId)?.has(optionId) !== true
        if (isNewEntry && bufferedEntries >= maxEntries) {
          return Effect.zipRight(earlyFlush, new BufferFull({ pending: bufferedVotes() }))
        }
        // A poll whose options this instance has read once needs no second read while it is clear of the cap.
        const known = knownOptions.get(pollId)
        if (known !== undefined && (known.has(optionId) || known.size < MAX_OPTIONS_PER_POLL)) {
          known.add(optionId)
          return accept(partition, pollId, optionId)
        }
        return Effect.zipRight(
          checkOption(partition, pollId, optionId),
          Effect.suspend(() => accept(partition, pollId, optionId))
        )
      }),
    results: (pollId: PollId) =>
      Effect.suspend(() => {
        const partition = partitions.get(inner.partitionOf(pollId))
        return partition === undefined
          ? inner.results(pollId)
          : readBuffered(partition, pollId, undefined, plainAnswer, 1, clock.unsafeCurrentTimeMillis())
      }),
    exactResults: (pollId: PollId, batchIds: ReadonlyArray<string>) =>
      Effect.suspend(() => {
        const partition = partitions.get(inner.partitionOf(pollId))
        return partition === undefined
          ? inner.exactResults(pollId, batchIds)
          : readBuffered(
              partition,
              pollId,
              batchIds,
              (counts, servedVia, applied): ExactResults => ({
                counts,
                servedVia,
                appliedBatches: applied.filter((id) => batchIds.includes(id))
              }),
              1,
              clock.unsafeCurrentTimeMillis()
            )
      }),
    // Not buffered: the voter's record decides before the 200, and the count goes with it.
    voteOnce: inner.voteOnce,
    applyBatch: inner.applyBatch,
    optionsOf: inner.optionsOf,
    partitionOf: inner.partitionOf,
    health: Effect.map(
      Effect.all([inner.health, journal.health ?? Effect.succeed(undefined), Clock.currentTimeMillis]),
      ([h, j, now]) => ({
        ...h,
        pendingVotes: h.pendingVotes + bufferedVotes(),
        flushes: flushHealth(h, now),
        ...(j === undefined ? {} : { journal: j })
      })
    )
  }
  return store
})

export const layer = (options: WriteBehindOptions): Layer.Layer<VoteStore, never, InnerStore | Journal.Journal> =>
  Layer.scoped(
    VoteStore,
    Effect.flatMap(Effect.all([InnerStore, Journal.Journal]), ([inner, journal]) => make(inner, options, journal))
  )
