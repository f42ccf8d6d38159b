import { Effect, Either } from "effect"
import type { Redis } from "ioredis"
import { EventEmitter } from "node:events"
import { afterEach, describe, expect, it, vi } from "vitest"
import type { StoreUnavailable } from "../src/Domain.js"
import * as RedisClient from "../src/RedisClient.js"
import { freePort } from "./support/redis.js"

afterEach(() => {
  vi.useRealTimers()
})

const fakeTimers = () =>
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"] })

describe("the command time-out of a node", () => {
  it("is the ioredis client's commandTimeout (a pub/sub client waits for its connection instead)", async () => {
    // Nothing listens there: the client starts anyway and keeps its options.
    const node = { url: `redis://127.0.0.1:${await freePort()}`, name: "nowhere" }
    const timeouts = await Effect.runPromise(
      Effect.scoped(
        Effect.all([
          RedisClient.acquire({ ...node, commandTimeoutMs: 900 }),
          RedisClient.acquire(node),
          RedisClient.acquire({ ...node, commandTimeoutMs: 900 }, { subscriber: true })
        ])
      ).pipe(Effect.map((clients: ReadonlyArray<Redis>) => clients.map((c) => c.options.commandTimeout)))
    )
    expect(timeouts).toEqual([900, RedisClient.COMMAND_TIMEOUT_MS, undefined])
  })

  it("decides when caller's second guard gives up on a call that never settles: 200 ms after it", async () => {
    fakeTimers()
    const hanging = () => new Promise<never>(() => {})
    const outcome = (commandTimeoutMs?: number) => {
      const node = commandTimeoutMs === undefined ? { name: "n" } : { name: "n", commandTimeoutMs }
      const result: { value?: Either.Either<never, StoreUnavailable> } = {}
      void Effect.runPromise(Effect.either(RedisClient.caller(node)("get", hanging))).then((e) => (result.value = e))
      return result
    }
    const configured = outcome(400)
    const byDefault = outcome()
    await vi.advanceTimersByTimeAsync(599)
    expect(configured.value).toBeUndefined()
    await vi.advanceTimersByTimeAsync(1)
    expect(configured.value).toMatchObject({ left: { node: "n", reason: "get: timed out" } })
    await vi.advanceTimersByTimeAsync(RedisClient.COMMAND_TIMEOUT_MS + 200 - 600 - 1)
    expect(byDefault.value).toBeUndefined()
    await vi.advanceTimersByTimeAsync(1)
    expect(Either.isLeft(byDefault.value!)).toBe(true)
  })

  it("decides the fence's deadline: a write stops applying FENCE_MARGIN_MS before its command times out", async () => {
    fakeTimers()
    // A node whose clock agrees with ours, so the deadline is ours too.
    const client = Object.assign(new EventEmitter(), {
      status: "ready",
      time: () => {
        const now = Date.now()
        return Promise.resolve([String(Math.floor(now / 1000)), String((now % 1000) * 1000)])
      }
    }) as unknown as Redis
    const ahead = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const clock = yield* RedisClient.serverClock(client, 900)
          yield* Effect.promise(() => vi.advanceTimersByTimeAsync(0))
          return clock.deadline() - Date.now()
        })
      )
    )
    expect(ahead).toBe(900 - RedisClient.FENCE_MARGIN_MS)
  })
})
