import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import * as fc from "fast-check"
import type { IncomingMessage } from "node:http"
import { afterAll, beforeAll } from "vitest"
import { clientAddress } from "../src/Http/RateLimits.js"
import { type Limit, makeMemory, RateLimiter, type RateLimiterShape, step } from "../src/RateLimit.js"
import * as RateLimitRedis from "../src/RateLimit/Redis.js"
import { type RedisCluster, startCluster } from "./support/cluster.js"
import { type RedisServer, startRedis } from "./support/redis.js"

/** GCRA over the memory and the Redis limiter: one contract, and both give the same verdicts step by step. */

let redis: RedisServer
let cluster: RedisCluster
beforeAll(async () => {
  ;[redis, cluster] = await Promise.all([startRedis(), startCluster({ replicas: 0 })])
}, 60_000)
afterAll(() => Promise.all([redis?.stop(), cluster?.stop()]))

const client = (key: string, quota = 5, windowMs = 60_000): Limit => ({ policy: "client", key, quota, windowMs })
const voter = (key: string, quota = 2, windowMs = 60_000): Limit => ({ policy: "voter", key, quota, windowMs })

/** A limiter of each backend, with keys of its own, so tests on one never meet another's counts. */
const BACKENDS: ReadonlyArray<readonly [string, () => Layer.Layer<RateLimiter>]> = [
  ["memory", () => Layer.sync(RateLimiter, () => makeMemory(1000))],
  ["redis", () => RateLimitRedis.layer([{ name: "redis", url: redis.url }])],
  ["redis cluster", () => RateLimitRedis.layerCluster({ seeds: cluster.seeds })]
]

let unique = 0
const fresh = (prefix: string) => `${prefix}-${++unique}-${Math.random().toString(36).slice(2)}`

const T0 = 1_800_000_000_000

describe.each(BACKENDS)("the %s limiter", (_, layer) => {
  const withLimiter = <A>(use: (limiter: RateLimiterShape) => Effect.Effect<A>) =>
    Effect.flatMap(RateLimiter, use).pipe(Effect.provide(layer()), Effect.scoped)

  it.effect("lets a quota through at once, then refuses, and says when to come back", () =>
    withLimiter((limiter) =>
      Effect.gen(function* () {
        const limit = [client(fresh("burst"))]
        const verdicts = []
        for (let i = 0; i < 6; i++) verdicts.push(yield* limiter.check(limit, T0))
        expect(verdicts.map((v) => v.allowed)).toEqual([true, true, true, true, true, false])
        expect(verdicts.map((v) => v.remaining)).toEqual([4, 3, 2, 1, 0, 0])
        // One request comes back every window / quota = 12 s.
        expect(verdicts[5]!.retryAfterMs).toBe(12_000)
        expect((yield* limiter.check(limit, T0 + 11_999)).allowed).toBe(false)
        expect((yield* limiter.check(limit, T0 + 12_000)).allowed).toBe(true)
        expect((yield* limiter.check(limit, T0 + 12_000)).allowed).toBe(false)
        // After a whole window the whole quota is back.
        const later = []
        for (let i = 0; i < 6; i++) later.push((yield* limiter.check(limit, T0 + 12_000 + 60_000)).allowed)
        expect(later).toEqual([true, true, true, true, true, false])
      })
    )
  )

  it.effect("a request one limit refuses spends none of the others", () =>
    withLimiter((limiter) =>
      Effect.gen(function* () {
        const address = client(fresh("addr"))
        const one = voter(fresh("voter"))
        expect((yield* limiter.check([address, one], T0)).allowed).toBe(true)
        expect((yield* limiter.check([address, one], T0)).allowed).toBe(true)
        const refused = yield* limiter.check([address, one], T0)
        expect(refused).toMatchObject({ allowed: false, limit: { policy: "voter" } })
        // The address spent 2 of its 5, not 3: four more requests of other voters get in, the fifth does not.
        const others = []
        for (let i = 0; i < 4; i++) others.push((yield* limiter.check([address, voter(fresh("v"))], T0)).allowed)
        expect(others).toEqual([true, true, true, false])
      })
    )
  )

  it.effect("answers with the tightest limit: the one with the fewest requests left", () =>
    withLimiter((limiter) =>
      Effect.gen(function* () {
        const v = yield* limiter.check([client(fresh("a"), 100), voter(fresh("b"), 3)], T0)
        expect(v).toMatchObject({ allowed: true, remaining: 2, limit: { policy: "voter", quota: 3 } })
      })
    )
  )
})

describe("the two limiters agree", () => {
  it("on every verdict of any sequence of requests over a few keys and times", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            keys: fc.subarray(["a", "b", "c"], { minLength: 1 }),
            advanceMs: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 30_000 })),
            quota: fc.constantFrom(1, 3, 7)
          }),
          { minLength: 1, maxLength: 40 }
        ),
        async (requests) => {
          const prefix = fresh("agree")
          const run = (layer: Layer.Layer<RateLimiter>) =>
            Effect.runPromise(
              Effect.flatMap(RateLimiter, (limiter) =>
                Effect.gen(function* () {
                  let now = T0
                  const out = []
                  for (const r of requests) {
                    now += r.advanceMs
                    const limits = r.keys.map((k) => client(`${prefix}-${k}-${r.quota}`, r.quota, 10_000))
                    out.push(yield* limiter.check(limits, now))
                  }
                  return out
                })
              ).pipe(Effect.provide(layer), Effect.scoped)
            )
          const [memory, onRedis] = [await run(BACKENDS[0]![1]()), await run(BACKENDS[1]![1]())]
          expect(onRedis).toEqual(memory)
        }
      ),
      { numRuns: 30 }
    )
  }, 60_000)
})

describe("the Redis limiter, many requests in one turn", () => {
  it.effect("gives each the verdict it would have had alone, in the order they came", () =>
    Effect.gen(function* () {
      const prefix = fresh("turn")
      const requests = Array.from({ length: 1200 }, (_, i) =>
        i % 3 === 0 ? [client(`${prefix}-a`, 7), voter(`${prefix}-v${i % 5}`, 3)] : [client(`${prefix}-b${i % 4}`, 5)]
      )
      const redisLimiter = yield* RateLimiter
      // All at once: one turn of the event loop, so one script call for every 500 of them.
      const together = yield* Effect.all(
        requests.map((limits) => redisLimiter.check(limits, T0)),
        { concurrency: "unbounded" }
      )
      const memory = makeMemory(10_000)
      const alone = []
      for (const limits of requests) alone.push(yield* memory.check(limits, T0))
      expect(together).toEqual(alone)
      expect(together.filter((v) => v.allowed).length).toBe(alone.filter((v) => v.allowed).length)
      expect(together.some((v) => !v.allowed)).toBe(true)
    }).pipe(Effect.provide(BACKENDS[1]![1]()), Effect.scoped)
  )
})

describe("GCRA, one step", () => {
  it("lets through at most a quota at once plus one per interval, over any stretch of time", () =>
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 50 }),
        fc.array(fc.integer({ min: 0, max: 5_000 }), { minLength: 1, maxLength: 300 }),
        (quota, gaps) => {
          const limit = client("k", quota, 10_000)
          const interval = Math.ceil((10_000 * 1000) / quota)
          let tat: number | undefined
          let now = T0 * 1000
          const allowedAt: Array<number> = []
          for (const gap of gaps) {
            now += gap * 1000
            const s = step(limit, tat, now)
            if (s.allowed) {
              tat = s.tat
              allowedAt.push(now)
            }
          }
          for (let i = 0; i < allowedAt.length; i++) {
            for (let j = i; j < allowedAt.length; j++) {
              expect(j - i + 1).toBeLessThanOrEqual(quota + Math.floor((allowedAt[j]! - allowedAt[i]!) / interval))
            }
          }
        }
      )
    ))

  it("refuses nobody who keeps to the rate", () => {
    const limit = client("k", 4, 10_000)
    let tat: number | undefined
    for (let i = 0; i < 100; i++) {
      const s = step(limit, tat, (T0 + i * 2_500) * 1000)
      expect(s.allowed).toBe(true)
      tat = s.tat
    }
  })
})

describe("the memory limiter stays bounded", () => {
  it.effect("holds at most its key cap however many clients come", () =>
    Effect.gen(function* () {
      const limiter = makeMemory(100)
      for (let i = 0; i < 1000; i++) yield* limiter.check([client(`flood-${i}`)], T0)
      // The most recent clients are remembered: the last one has spent one of its five.
      expect((yield* limiter.check([client("flood-999")], T0)).remaining).toBe(3)
      // The first was forgotten to make room, and starts afresh.
      expect((yield* limiter.check([client("flood-0")], T0)).remaining).toBe(4)
    })
  )
})

describe("the client address", () => {
  const request = (remoteAddress: string, forwarded?: string | Array<string>) =>
    ({
      socket: { remoteAddress },
      headers: forwarded === undefined ? {} : { "x-forwarded-for": forwarded }
    }) as unknown as IncomingMessage

  it("is the connection's unless proxies are trusted", () => {
    expect(clientAddress(request("10.0.0.9", "1.2.3.4"), 0)).toBe("10.0.0.9")
    expect(clientAddress(request("::ffff:10.0.0.9"), 0)).toBe("10.0.0.9")
  })

  it("is the entry the trusted proxies vouch for, never one the client wrote further left", () => {
    expect(clientAddress(request("10.0.0.9", "6.6.6.6, 1.2.3.4"), 1)).toBe("1.2.3.4")
    expect(clientAddress(request("10.0.0.9", "6.6.6.6, 1.2.3.4, 10.0.0.2"), 2)).toBe("1.2.3.4")
    expect(clientAddress(request("10.0.0.9", "2001:db8::1"), 1)).toBe("2001:db8::1")
    // Fewer entries than proxies: the leftmost.
    expect(clientAddress(request("10.0.0.9", "1.2.3.4"), 3)).toBe("1.2.3.4")
  })

  it("falls back to the connection's for any header that does not name an address", () => {
    for (const hostile of [
      "",
      ",",
      "__proto__",
      "constructor",
      "1.2.3.4\r\nx: y",
      "a".repeat(10_000),
      "%00",
      "<script>"
    ]) {
      expect(clientAddress(request("10.0.0.9", hostile), 1)).toBe("10.0.0.9")
    }
    expect(clientAddress(request("10.0.0.9", ["1.2.3.4", "5.6.7.8"]), 1)).toBe("10.0.0.9")
  })
})
