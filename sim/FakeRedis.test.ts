import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, TestClock } from "effect"
import type { OptionId, PollId } from "../src/Domain.js"
import { MAX_OPTIONS_PER_POLL } from "../src/Domain.js"
import type { VoteStoreShape } from "../src/VoteStore.js"
import { makeMemory } from "../src/VoteStore.js"
import * as FakeRedis from "./FakeRedis.js"
import { type Batch } from "../src/VoteStore.js"

const poll = (id: string) => id as PollId
const option = (id: string) => id as OptionId
const batch = (id: string, pollId: string, increments: Record<string, number>): Batch => ({
  id,
  increments: new Map([[poll(pollId), new Map(Object.entries(increments).map(([k, n]) => [option(k), n]))]])
})

// The fake stands in for src/VoteStore/Redis.ts, so it must pass the same contract as the other stores.
const backends: Array<[string, Effect.Effect<VoteStoreShape>]> = [
  ["memory store", makeMemory],
  ["fake redis", Effect.sync(() => FakeRedis.make({ name: "redis_7000" }).store)]
]

describe.each(backends)("%s", (_, make) => {
  it.effect("counts votes per option; a poll never voted on is empty", () =>
    Effect.gen(function* () {
      const store = yield* make
      for (const o of ["A", "B", "A"]) yield* store.vote(poll("1"), option(o))
      expect((yield* store.results(poll("1"))).counts).toEqual({ A: 2, B: 1 })
      expect((yield* store.results(poll("2"))).counts).toEqual({})
    })
  )

  it.effect(`refuses a ${MAX_OPTIONS_PER_POLL + 1}th option and still counts the existing ones`, () =>
    Effect.gen(function* () {
      const store = yield* make
      for (let i = 0; i < MAX_OPTIONS_PER_POLL; i++) yield* store.vote(poll("cap"), option(`o${i}`))
      const refused = yield* Effect.exit(store.vote(poll("cap"), option("one-too-many")))
      expect(refused).toStrictEqual(Exit.fail(expect.objectContaining({ _tag: "TooManyOptions", pollId: "cap" })))
      yield* store.vote(poll("cap"), option("o0"))
      const { counts } = yield* store.results(poll("cap"))
      expect(Object.keys(counts)).toHaveLength(MAX_OPTIONS_PER_POLL)
      expect(counts.o0).toBe(2)
    })
  )

  it.effect("applies a batch once per id and says which asked-about batches it holds", () =>
    Effect.gen(function* () {
      const store = yield* make
      yield* store.applyBatch(batch("b1", "7", { A: 3, B: 1 }))
      yield* store.applyBatch(batch("b1", "7", { A: 3, B: 1 }))
      yield* store.applyBatch(batch("b2", "7", { A: 1 }))
      const result = yield* store.exactResults(poll("7"), ["b1", "b3", "b2"])
      expect(result.counts).toEqual({ A: 4, B: 1 })
      expect(result.appliedBatches).toEqual(["b1", "b2"])
    })
  )
})

describe("fake redis faults", () => {
  it.effect("a call takes its request and response latency on the clock", () =>
    Effect.gen(function* () {
      const shard = FakeRedis.make({ name: "redis_7000", latency: { min: 20, max: 20 } })
      const vote = yield* Effect.fork(shard.store.vote(poll("1"), option("A")))
      yield* TestClock.adjust(19)
      expect(shard.counts(poll("1"))).toEqual({})
      yield* TestClock.adjust(1)
      // Executed after the request latency; answered after the response latency.
      expect(shard.counts(poll("1"))).toEqual({ A: 1 })
      expect(vote.unsafePoll()).toBeNull()
      yield* TestClock.adjust(20)
      expect(yield* Fiber.join(vote)).toBeUndefined()
    })
  )

  it.effect("a node that is down fails at once with 503 naming it, keeps its data, and serves again when up", () =>
    Effect.gen(function* () {
      const shard = FakeRedis.make({ name: "redis_7001" })
      yield* shard.store.vote(poll("1"), option("A"))
      shard.down()
      const failed = yield* Effect.flip(shard.store.results(poll("1")))
      expect(failed._tag).toBe("StoreUnavailable")
      expect(failed.node).toBe("redis_7001")
      expect(failed.status).toBe(503)
      expect((yield* shard.store.health).nodes).toEqual([{ name: "redis_7001", reachable: false }])
      shard.up()
      expect((yield* shard.store.results(poll("1"))).counts).toEqual({ A: 1 })
      expect((yield* shard.store.health).nodes).toEqual([{ name: "redis_7001", reachable: true }])
    })
  )

  it.effect("a lost answer: the batch is applied, the call fails after the timeout, and the retry is a no-op", () =>
    Effect.gen(function* () {
      const shard = FakeRedis.make({ name: "redis_7000", timeoutMs: 1500 })
      shard.script("applyBatch", "timeoutAfterApply")
      const first = yield* Effect.fork(Effect.exit(shard.store.applyBatch(batch("b1", "9", { A: 2 }))))
      yield* TestClock.adjust(1499)
      expect(shard.counts(poll("9"))).toEqual({ A: 2 })
      expect(first.unsafePoll()).toBeNull()
      yield* TestClock.adjust(1)
      expect(Exit.isFailure(yield* Fiber.join(first))).toBe(true)
      yield* shard.store.applyBatch(batch("b1", "9", { A: 2 }))
      expect(shard.counts(poll("9"))).toEqual({ A: 2 })
      expect(shard.stats.batchesIgnored).toBe(1)
    })
  )

  it.effect("a node that goes down while a write is in flight has applied it but loses the answer", () =>
    Effect.gen(function* () {
      const shard = FakeRedis.make({ name: "redis_7000", latency: { min: 10, max: 10 } })
      const call = yield* Effect.fork(Effect.exit(shard.store.applyBatch(batch("b1", "3", { C: 1 }))))
      yield* TestClock.adjust(15)
      shard.down()
      yield* TestClock.adjust(10)
      expect(Exit.isFailure(yield* Fiber.join(call))).toBe(true)
      expect(shard.hasApplied("b1")).toBe(true)
      expect(shard.counts(poll("3"))).toEqual({ C: 1 })
    })
  )

  it.effect("scripted faults come first and in order, then the random rates", () =>
    Effect.gen(function* () {
      const shard = FakeRedis.make({ name: "redis_7000" })
      shard.script("vote", "error", "ok", "error")
      const outcomes = []
      for (let i = 0; i < 4; i++)
        outcomes.push(Exit.isSuccess(yield* Effect.exit(shard.store.vote(poll("1"), option("A")))))
      expect(outcomes).toEqual([false, true, false, true])
      shard.setRates({ error: 1 })
      expect(Exit.isFailure(yield* Effect.exit(shard.store.vote(poll("1"), option("A"))))).toBe(true)
      shard.setRates({ error: 0 })
      yield* shard.store.vote(poll("1"), option("A"))
      expect(shard.counts(poll("1"))).toEqual({ A: 3 })
    })
  )
})
