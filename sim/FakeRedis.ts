import { Effect, Random } from "effect"
import type { OptionId, PollId, PollResults } from "../src/Domain.js"
import {
  addCounts,
  AlreadyVoted,
  MAX_OPTIONS_PER_POLL,
  newCounts,
  StoreUnavailable,
  TooManyOptions
} from "../src/Domain.js"
import { COMMAND_TIMEOUT_MS } from "../src/RedisClient.js"
import type { VoteStoreShape } from "../src/VoteStore.js"
import { MAX_POLLS_PER_BATCH, type Batch } from "../src/VoteStore.js"
import * as Faults from "./Faults.js"

/**
 * One Redis shard in memory, with the semantics of src/VoteStore/Redis.ts (the 256-option cap on single votes, batches
 * applied at most once per id, batch markers kept across restarts like AOF-persisted keys) and injectable faults.
 *
 * A call goes out (request latency), is executed at one instant, and comes back (response latency). Time passes only
 * through Effect's Clock, so TestClock or the simulation's virtual clock drives it; a latency of 0 does not sleep.
 */

export type Op = "vote" | "results" | "applyBatch" | "ping"

/**
 * What happens to one call. `error`: refused before it reaches the data (connection reset, node loading).
 * `timeoutAfterApply`: executed, then the answer is lost and the client gives up after its command timeout.
 */
export type Fault = "ok" | "error" | "timeoutAfterApply"

export interface FaultRates {
  /** Probability that a call fails before it is executed. */
  readonly error?: number | undefined
  /** Probability that a write (vote, applyBatch) is executed and then reported as timed out. */
  readonly timeoutAfterApply?: number | undefined
  /** Per-call one-way latency in milliseconds, drawn uniformly from [min, max]. */
  readonly latency?: { readonly min: number; readonly max: number } | undefined
}

export interface FakeRedisOptions extends FaultRates {
  readonly name: string
  /** Source of the random latencies and faults; seed it for a reproducible run. */
  readonly random?: Random.Random
  /** How long a client waits for a lost answer before it reports a timeout. */
  readonly timeoutMs?: number
  /** Orders log entries among events that share one instant; defaults to a counter of this shard. */
  readonly stamp?: () => number
}

/** One change of a counter, in the order the shard executed them. */
export interface Change {
  readonly at: number
  readonly seq: number
  readonly pollId: PollId
  readonly optionId: OptionId
  readonly n: number
  /** The batch that carried it, or undefined for a single vote. */
  readonly batchId: string | undefined
}

export interface FakeRedisStats {
  calls: number
  refused: number
  errors: number
  timeoutsAfterApply: number
  batchesApplied: number
  batchesIgnored: number
}

export interface FakeRedis extends Faults.FaultControls<Op, Fault, FaultRates> {
  readonly name: string
  readonly store: VoteStoreShape
  /** Stop answering: calls fail at once, a call in flight loses its answer. Data is kept, as with AOF. */
  readonly down: () => void
  readonly up: () => void
  readonly isUp: () => boolean
  readonly polls: () => ReadonlyMap<PollId, ReadonlyMap<OptionId, number>>
  readonly counts: (pollId: PollId) => Record<string, number>
  readonly log: ReadonlyArray<Change>
  readonly hasApplied: (batchId: string) => boolean
  readonly stats: Readonly<FakeRedisStats>
}

const isWrite = (op: Op) => op === "vote" || op === "applyBatch"

export const make = (options: FakeRedisOptions): FakeRedis => {
  const { name } = options
  const random = options.random ?? Random.make(name)
  const timeoutMs = options.timeoutMs ?? COMMAND_TIMEOUT_MS
  const faults = Faults.make<Op, Fault, FaultRates>({
    error: options.error,
    timeoutAfterApply: options.timeoutAfterApply,
    latency: options.latency
  })
  let up = true
  let counter = 0
  const stamp = options.stamp ?? (() => counter++)
  const data = new Map<PollId, Map<OptionId, number>>()
  const appliedBatches = new Set<string>()
  const log: Array<Change> = []
  const stats: FakeRedisStats = {
    calls: 0,
    refused: 0,
    errors: 0,
    timeoutsAfterApply: 0,
    batchesApplied: 0,
    batchesIgnored: 0
  }

  const unavailable = (what: string, reason: string) =>
    new StoreUnavailable({ node: name, reason: `${what}: ${reason}` })

  const delay = Effect.suspend(() => {
    const latency = faults.rates().latency
    if (latency === undefined || latency.max <= 0) return Effect.void
    return Effect.flatMap(random.nextIntBetween(latency.min, latency.max + 1), (ms) =>
      ms > 0 ? Effect.sleep(ms) : Effect.void
    )
  })

  const chance = (p: number | undefined) =>
    p === undefined || p <= 0 ? Effect.succeed(false) : Effect.map(random.next, (x) => x < p)

  const nextFault = (op: Op): Effect.Effect<Fault> =>
    Effect.suspend(() => {
      const next = faults.nextScripted(op)
      if (next !== undefined) return Effect.succeed(next)
      return Effect.flatMap(chance(faults.rates().error), (error) => {
        if (error) return Effect.succeed<Fault>("error")
        if (!isWrite(op)) return Effect.succeed<Fault>("ok")
        return Effect.map(chance(faults.rates().timeoutAfterApply), (lost): Fault =>
          lost ? "timeoutAfterApply" : "ok"
        )
      })
    })

  /** One round trip: `execute` runs at a single instant, between the request and the response latency. */
  const call = <A, E>(op: Op, what: string, execute: () => Effect.Effect<A, E>) =>
    Effect.gen(function* () {
      stats.calls++
      // ioredis has no offline queue: a command to a node that is down fails at once.
      if (!up) {
        stats.refused++
        return yield* unavailable(what, "not connected")
      }
      const fault = yield* nextFault(op)
      yield* delay
      if (!up) {
        stats.refused++
        return yield* unavailable(what, "connection lost")
      }
      if (fault === "error") {
        stats.errors++
        return yield* unavailable(what, "injected error")
      }
      const result = yield* execute()
      if (fault === "timeoutAfterApply") {
        stats.timeoutsAfterApply++
        yield* Effect.sleep(timeoutMs)
        return yield* unavailable(what, "no answer in time")
      }
      yield* delay
      if (!up) {
        stats.refused++
        return yield* unavailable(what, "connection lost")
      }
      return result
    })

  const add = (pollId: PollId, optionId: OptionId, n: number, batchId: string | undefined, at: number) => {
    let options = data.get(pollId)
    if (options === undefined) data.set(pollId, (options = new Map()))
    options.set(optionId, (options.get(optionId) ?? 0) + n)
    log.push({ at, seq: stamp(), pollId, optionId, n, batchId })
  }

  const counts = (pollId: PollId): Record<string, number> => addCounts(newCounts(), data.get(pollId))
  const voters = new Map<PollId, Set<string>>()

  const store: VoteStoreShape = {
    vote: (pollId, optionId) =>
      call("vote", `vote`, () =>
        Effect.flatMap(
          Effect.clockWith((clock) => clock.currentTimeMillis),
          (at) => {
            const options = data.get(pollId)
            if (options !== undefined && !options.has(optionId) && options.size >= MAX_OPTIONS_PER_POLL) {
              return new TooManyOptions({ pollId })
            }
            add(pollId, optionId, 1, undefined, at)
            return Effect.void
          }
        )
      ),
    voteOnce: (pollId, optionId, voterId) =>
      call("vote", `vote once`, () =>
        Effect.flatMap(
          Effect.clockWith((clock) => clock.currentTimeMillis),
          (at) => {
            let voted = voters.get(pollId)
            if (voted === undefined) voters.set(pollId, (voted = new Set()))
            if (voted.has(voterId)) return new AlreadyVoted({ pollId })
            voted.add(voterId)
            add(pollId, optionId, 1, undefined, at)
            return Effect.void
          }
        )
      ),
    results: (pollId) =>
      call("results", "results", () => Effect.sync((): PollResults => ({ counts: counts(pollId), servedVia: name }))),
    exactResults: (pollId, batchIds) =>
      call("results", "results", () =>
        Effect.sync(() => ({
          counts: counts(pollId),
          servedVia: name,
          appliedBatches: batchIds.filter((id) => appliedBatches.has(id))
        }))
      ),
    optionsOf: (pollIds) =>
      call("results", "read options", () =>
        Effect.sync(() => new Map(pollIds.map((p) => [p, Object.keys(counts(p))])))
      ),
    applyBatch: (batch: Batch) =>
      batch.increments.size > MAX_POLLS_PER_BATCH
        ? Effect.dieMessage(`batch ${batch.id} has ${batch.increments.size} polls; at most ${MAX_POLLS_PER_BATCH}`)
        : call("applyBatch", `apply batch ${batch.id}`, () =>
            Effect.map(
              Effect.clockWith((clock) => clock.currentTimeMillis),
              (at) => {
                if (appliedBatches.has(batch.id)) {
                  stats.batchesIgnored++
                  return
                }
                appliedBatches.add(batch.id)
                stats.batchesApplied++
                for (const [pollId, options] of batch.increments) {
                  for (const [optionId, n] of options) add(pollId, optionId, n, batch.id, at)
                }
              }
            )
          ),
    partitionOf: () => name,
    health: call("ping", "ping", () => Effect.void).pipe(
      Effect.match({ onFailure: () => false, onSuccess: () => true }),
      Effect.map((reachable) => ({ nodes: [{ name, reachable }], pendingVotes: 0 }))
    )
  }

  return {
    name,
    store,
    down: () => {
      up = false
    },
    up: () => {
      up = true
    },
    isUp: () => up,
    script: faults.script,
    clearScript: faults.clearScript,
    setRates: faults.setRates,
    polls: () => data,
    counts,
    log,
    hasApplied: (batchId) => appliedBatches.has(batchId),
    stats
  }
}
