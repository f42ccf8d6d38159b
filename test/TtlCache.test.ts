import { describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Fiber, TestClock } from "effect"
import * as TtlCache from "../src/TtlCache.js"

/** A lookup that counts its calls and answers `key:n` for the n-th call, or fails for keys starting with "bad". */
const counting = () => {
  const state = { calls: 0 }
  const lookup = (key: string) =>
    Effect.suspend(() => {
      state.calls++
      return key.startsWith("bad") ? Effect.fail(`no ${key}`) : Effect.succeed(`${key}:${state.calls}`)
    })
  return { state, lookup }
}

describe("TtlCache", () => {
  it.effect("serves a value for its time to live after the lookup, then looks it up again", () =>
    Effect.gen(function* () {
      const { state, lookup } = counting()
      const cache = yield* TtlCache.make({ lookup, ttlMs: () => 1000, capacity: 10 })

      expect(yield* cache.get("a")).toEqual({ value: "a:1", hit: false })
      yield* TestClock.adjust(Duration.millis(999))
      expect(yield* cache.get("a")).toEqual({ value: "a:1", hit: true })
      yield* TestClock.adjust(Duration.millis(1))
      expect(yield* cache.get("a")).toEqual({ value: "a:2", hit: false })
      expect(state.calls).toBe(2)
    })
  )

  it.effect("keeps neither failures nor values whose time to live is 0", () =>
    Effect.gen(function* () {
      const { state, lookup } = counting()
      const cache = yield* TtlCache.make({
        lookup,
        ttlMs: (v: string) => (v.startsWith("skip") ? 0 : 1000),
        capacity: 10
      })

      expect(yield* Effect.flip(cache.get("bad"))).toBe("no bad")
      expect(yield* Effect.flip(cache.get("bad"))).toBe("no bad")
      expect(yield* cache.get("skip")).toEqual({ value: "skip:3", hit: false })
      expect(yield* cache.get("skip")).toEqual({ value: "skip:4", hit: false })
      expect(state.calls).toBe(4)
      expect(cache.size()).toBe(0)
    })
  )

  it.effect("shares one lookup among concurrent misses of a key", () =>
    Effect.gen(function* () {
      const gate = yield* Deferred.make<void>()
      let calls = 0
      const cache = yield* TtlCache.make({
        lookup: (key: string) => Effect.as(Deferred.await(gate), `${key}:${++calls}`),
        ttlMs: () => 1000,
        capacity: 10
      })
      const first = yield* Effect.fork(cache.get("a"))
      while (calls === 0) yield* Effect.yieldNow()
      const others = yield* Effect.fork(Effect.all([cache.get("a"), cache.get("a")], { concurrency: "unbounded" }))
      for (let i = 0; i < 10; i++) yield* Effect.yieldNow()
      yield* Deferred.succeed(gate, undefined)
      expect(yield* Fiber.join(first)).toEqual({ value: "a:1", hit: false })
      expect(yield* Fiber.join(others)).toEqual([
        { value: "a:1", hit: true },
        { value: "a:1", hit: true }
      ])
      expect(calls).toBe(1)
    })
  )

  it.effect("an invalidated key is looked up again, and a lookup already under way does not store its answer", () =>
    Effect.gen(function* () {
      const gate = yield* Deferred.make<void>()
      let calls = 0
      let wait = false
      const cache = yield* TtlCache.make({
        lookup: (key: string) =>
          Effect.zipRight(wait ? Deferred.await(gate) : Effect.void, Effect.succeed(`${key}:${++calls}`)),
        ttlMs: () => 1000,
        capacity: 10
      })
      expect((yield* cache.get("a")).value).toBe("a:1")
      cache.invalidate("a")
      expect(yield* cache.get("a")).toEqual({ value: "a:2", hit: false })

      cache.invalidate("a")
      wait = true
      const slow = yield* Effect.fork(cache.get("a"))
      while (calls === 2) yield* Effect.yieldNow()
      cache.invalidate("a")
      yield* Deferred.succeed(gate, undefined)
      expect((yield* Fiber.join(slow)).value).toBe("a:3")
      wait = false
      expect(yield* cache.get("a")).toEqual({ value: "a:4", hit: false })
    })
  )

  it.effect("holds at most `capacity` keys, dropping the least recently loaded", () =>
    Effect.gen(function* () {
      const { state, lookup } = counting()
      const cache = yield* TtlCache.make({ lookup, ttlMs: () => 1000, capacity: 2 })
      yield* cache.get("a")
      yield* cache.get("b")
      yield* cache.get("c")
      expect(cache.size()).toBe(2)
      expect((yield* cache.get("b")).hit).toBe(true)
      expect((yield* cache.get("c")).hit).toBe(true)
      expect(yield* cache.get("a")).toEqual({ value: "a:4", hit: false })
      expect(state.calls).toBe(4)
    })
  )
})
