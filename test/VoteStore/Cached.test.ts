import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, TestClock } from "effect"
import { type Counts, OptionId, PollId, StoreUnavailable } from "../../src/Domain.js"
import * as Cached from "../../src/VoteStore/Cached.js"
import type { VoteStoreShape } from "../../src/VoteStore.js"

const INNER = "inner_node"
const TTL = Duration.seconds(5)
const poll = (id: string) => PollId.make(id)
const option = (id: string) => OptionId.make(id)

/** A store whose counts the test sets directly; it counts the reads that reach it and can fail the next few. */
const makeInner = () => {
  const counts = new Map<string, Record<string, number>>()
  const state = { lookups: 0, failNext: 0, set: (pollId: string, c: Counts) => counts.set(pollId, { ...c }) }
  const store: VoteStoreShape = {
    vote: (pollId, optionId) =>
      Effect.sync(() => {
        const c = counts.get(pollId) ?? {}
        c[optionId] = (c[optionId] ?? 0) + 1
        counts.set(pollId, c)
      }),
    results: (pollId) => Effect.map(store.exactResults(pollId, []), ({ counts, servedVia }) => ({ counts, servedVia })),
    exactResults: (pollId) =>
      Effect.suspend(() => {
        state.lookups++
        if (state.failNext > 0) {
          state.failNext--
          return Effect.fail(new StoreUnavailable({ node: INNER, reason: "down for this read" }))
        }
        return Effect.succeed({ counts: { ...counts.get(pollId) }, servedVia: INNER, appliedBatches: [] })
      }),
    voteOnce: () => Effect.dieMessage("not used by these tests"),
    optionsOf: () => Effect.dieMessage("not used by these tests"),
    applyBatch: (batch) =>
      Effect.sync(() => {
        for (const [pollId, options] of batch.increments) {
          const c = counts.get(pollId) ?? {}
          for (const [optionId, n] of options) c[optionId] = (c[optionId] ?? 0) + n
          counts.set(pollId, c)
        }
      }),
    partitionOf: () => INNER,
    health: Effect.succeed({ nodes: [{ name: INNER, reachable: true }], pendingVotes: 0 })
  }
  return { store, state }
}

describe("Cached", () => {
  it.effect("serves the first read from the store and the next from the cache, stale until the TTL", () =>
    Effect.gen(function* () {
      const { store: inner, state } = makeInner()
      const store = yield* Cached.make(inner, { ttl: TTL })
      state.set("p", { A: 1 })

      expect(yield* store.results(poll("p"))).toEqual({ counts: { A: 1 }, servedVia: INNER })
      expect(state.lookups).toBe(1)

      state.set("p", { A: 5, B: 2 })
      expect(yield* store.results(poll("p"))).toEqual({ counts: { A: 1 }, servedVia: Cached.APP_CACHE })
      expect(state.lookups).toBe(1)

      yield* TestClock.adjust(Duration.subtract(TTL, Duration.millis(1)))
      expect(yield* store.results(poll("p"))).toEqual({ counts: { A: 1 }, servedVia: Cached.APP_CACHE })
      expect(state.lookups).toBe(1)

      yield* TestClock.adjust(Duration.millis(2))
      expect(yield* store.results(poll("p"))).toEqual({ counts: { A: 5, B: 2 }, servedVia: INNER })
      expect(state.lookups).toBe(2)
      expect(yield* store.results(poll("p"))).toEqual({ counts: { A: 5, B: 2 }, servedVia: Cached.APP_CACHE })
      expect(state.lookups).toBe(2)
    })
  )

  it.effect("caches each poll separately, an unknown poll included", () =>
    Effect.gen(function* () {
      const { store: inner, state } = makeInner()
      const store = yield* Cached.make(inner, { ttl: TTL })
      state.set("p", { A: 1 })
      expect((yield* store.results(poll("p"))).servedVia).toBe(INNER)
      expect(yield* store.results(poll("q"))).toEqual({ counts: {}, servedVia: INNER })
      expect(yield* store.results(poll("q"))).toEqual({ counts: {}, servedVia: Cached.APP_CACHE })
      expect(yield* store.results(poll("p"))).toEqual({ counts: { A: 1 }, servedVia: Cached.APP_CACHE })
      expect(state.lookups).toBe(2)
    })
  )

  it.effect("does not cache a failed read: the next read goes to the store and succeeds", () =>
    Effect.gen(function* () {
      const { store: inner, state } = makeInner()
      const store = yield* Cached.make(inner, { ttl: TTL })
      state.set("p", { A: 3 })
      state.failNext = 1

      const error = yield* Effect.flip(store.results(poll("p")))
      expect(error).toBeInstanceOf(StoreUnavailable)
      expect(error.node).toBe(INNER)

      // No time passes: a failure held for even a moment would be served here.
      const next = yield* Effect.either(store.results(poll("p")))
      expect(Either.isRight(next) ? next.right : `cached failure: ${next.left.message}`).toEqual({
        counts: { A: 3 },
        servedVia: INNER
      })
      expect(state.lookups).toBe(2)
      expect(yield* store.results(poll("p"))).toEqual({ counts: { A: 3 }, servedVia: Cached.APP_CACHE })
      expect(state.lookups).toBe(2)
    })
  )

  it.effect("holds at most `capacity` polls: the least recently used is read from the store again", () =>
    Effect.gen(function* () {
      const { store: inner, state } = makeInner()
      const store = yield* Cached.make(inner, { ttl: TTL, capacity: 2 })
      for (const id of ["p1", "p2", "p3"]) state.set(id, { [id]: 1 })

      for (const id of ["p1", "p2", "p3"]) expect((yield* store.results(poll(id))).servedVia).toBe(INNER)
      expect(state.lookups).toBe(3)

      expect(yield* store.results(poll("p3"))).toEqual({ counts: { p3: 1 }, servedVia: Cached.APP_CACHE })
      expect(state.lookups).toBe(3)

      state.set("p1", { p1: 7 })
      expect(yield* store.results(poll("p1"))).toEqual({ counts: { p1: 7 }, servedVia: INNER })
      expect(state.lookups).toBe(4)
    })
  )

  it.effect("passes votes straight through, and an exact read bypasses the cache", () =>
    Effect.gen(function* () {
      const { store: inner, state } = makeInner()
      const store = yield* Cached.make(inner, { ttl: TTL })
      yield* store.vote(poll("p"), option("A"))
      expect((yield* store.results(poll("p"))).counts).toEqual({ A: 1 })
      yield* store.vote(poll("p"), option("A"))
      expect(yield* store.results(poll("p"))).toEqual({ counts: { A: 1 }, servedVia: Cached.APP_CACHE })
      expect(yield* store.exactResults(poll("p"), [])).toEqual({
        counts: { A: 2 },
        servedVia: INNER,
        appliedBatches: []
      })
      expect(state.lookups).toBe(2)
    })
  )

  it.effect("drops the snapshots of the polls a batch touched, so the next read is fresh", () =>
    Effect.gen(function* () {
      const { store: inner, state } = makeInner()
      const store = yield* Cached.make(inner, { ttl: TTL })
      state.set("p", { A: 1 })
      state.set("q", { A: 1 })
      yield* store.results(poll("p"))
      yield* store.results(poll("q"))

      yield* store.applyBatch({ id: "b1", increments: new Map([[poll("p"), new Map([[option("A"), 4]])]]) })
      expect(yield* store.results(poll("p"))).toEqual({ counts: { A: 5 }, servedVia: INNER })
      expect(yield* store.results(poll("q"))).toEqual({ counts: { A: 1 }, servedVia: Cached.APP_CACHE })
      expect(state.lookups).toBe(3)
    })
  )
})
