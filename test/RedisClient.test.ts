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

  it("guards a caller's waiting calls on one timer, each expiring on its own time", async () => {
    fakeTimers()
    const call = RedisClient.caller({ name: "n", commandTimeoutMs: 400 })
    const outcomes: Array<Either.Either<never, StoreUnavailable> | undefined> = []
    const start = () => {
      const i = outcomes.push(undefined) - 1
      void Effect.runPromise(Effect.either(call("get", () => new Promise<never>(() => {})))).then(
        (e) => (outcomes[i] = e)
      )
    }
    for (let i = 0; i < 100; i++) start()
    expect(vi.getTimerCount()).toBe(1)
    await vi.advanceTimersByTimeAsync(250)
    start()
    await vi.advanceTimersByTimeAsync(349)
    expect(outcomes.filter((o) => o !== undefined)).toHaveLength(0)
    await vi.advanceTimersByTimeAsync(1)
    // The first hundred at 600 ms; the one begun at 250 ms still waits, on the same single timer.
    expect(outcomes.slice(0, 100).every((o) => o !== undefined && Either.isLeft(o))).toBe(true)
    expect(outcomes[100]).toBeUndefined()
    expect(vi.getTimerCount()).toBe(1)
    await vi.advanceTimersByTimeAsync(249)
    expect(outcomes[100]).toBeUndefined()
    await vi.advanceTimersByTimeAsync(1)
    expect(outcomes[100]).toMatchObject({ left: { node: "n", reason: "get: timed out" } })
    expect(vi.getTimerCount()).toBe(0)
  })

  it("does not fail a call that was answered before its guard ran out", async () => {
    fakeTimers()
    const call = RedisClient.caller({ name: "n", commandTimeoutMs: 400 })
    const answered = await Effect.runPromise(Effect.either(call("get", () => Promise.resolve("ok"))))
    await vi.advanceTimersByTimeAsync(1000)
    expect(answered).toEqual(Either.right("ok"))
    expect(vi.getTimerCount()).toBe(0)
  })

  /** A node whose clock agrees with ours (so deadlines are ours too), answering TIME when `answer` says. */
  const nodeAnswering = (status: string, answer: (reply: () => void) => void) => {
    const asked: Array<number> = []
    const client = Object.assign(new EventEmitter(), {
      status,
      time: () =>
        new Promise<[string, string]>((resolve) => {
          asked.push(Date.now())
          answer(() => {
            const now = Date.now()
            resolve([String(Math.floor(now / 1000)), String((now % 1000) * 1000)])
          })
        })
    }) as unknown as Redis
    return { client, asked }
  }

  /** Runs `body` with the clock of `client` (900 ms command time-out), on fake timers. */
  const withClock = <A>(client: Redis, body: (clock: RedisClient.ServerClock) => Promise<A>) =>
    Effect.runPromise(
      Effect.scoped(Effect.flatMap(RedisClient.serverClock(client, 900), (clock) => Effect.promise(() => body(clock))))
    )

  it("decides the fence's deadline: a write stops applying FENCE_MARGIN_MS before its command times out", async () => {
    fakeTimers()
    const { client } = nodeAnswering("ready", (reply) => reply())
    const ahead = await withClock(client, async (clock) => {
      await vi.advanceTimersByTimeAsync(0)
      return clock.fenced(async (deadline) => deadline - Date.now())
    })
    expect(ahead).toBe(900 - RedisClient.FENCE_MARGIN_MS)
  })

  it("sends no write without a fence: before the first reading a write asks for one and waits for it", async () => {
    fakeTimers()
    // A node connected lazily, on its first command: no reading until a write asks for one, answered 200 ms later.
    const { client, asked } = nodeAnswering("wait", (reply) => setTimeout(reply, 200))
    const { deadlines, sentAt } = await withClock(client, async (clock) => {
      expect(asked).toEqual([])
      const start = Date.now()
      const sentAt: Array<number> = []
      const writes = [1, 2].map(() =>
        clock.fenced(async (deadline) => {
          sentAt.push(Date.now() - start)
          return deadline - start
        })
      )
      await vi.advanceTimersByTimeAsync(200)
      return { deadlines: await Promise.all(writes), sentAt }
    })
    // One reading for both, and each deadline counts from when its write began, not from when the reading came.
    expect(asked).toHaveLength(1)
    expect(sentAt).toEqual([200, 200])
    expect(deadlines).toEqual([900 - RedisClient.FENCE_MARGIN_MS, 900 - RedisClient.FENCE_MARGIN_MS])
  })

  it("reads the clock again on every new connection, though an earlier TIME is still unanswered", async () => {
    fakeTimers()
    // The first connection's TIME is never answered (it went down); the next connection must not wait on it.
    let answers = 0
    const { client, asked } = nodeAnswering("ready", (reply) => {
      if (answers++ > 0) reply()
    })
    const ahead = await withClock(client, async (clock) => {
      ;(client as unknown as EventEmitter).emit("ready")
      await vi.advanceTimersByTimeAsync(0)
      return clock.fenced(async (deadline) => deadline - Date.now())
    })
    expect(asked).toHaveLength(2)
    expect(ahead).toBe(900 - RedisClient.FENCE_MARGIN_MS)
  })

  it("fails a write without sending it when no reading comes before its deadline would have passed", async () => {
    fakeTimers()
    // A node that is stalled: TIME answers only after the write's window.
    const { client } = nodeAnswering("wait", (reply) => setTimeout(reply, 2000))
    const sent: Array<number> = []
    const outcome = await withClock(client, async (clock) => {
      const write = clock
        .fenced(async (deadline) => sent.push(deadline))
        .then(
          () => "sent",
          (error: Error) => error.message
        )
      await vi.advanceTimersByTimeAsync(900 - RedisClient.FENCE_MARGIN_MS)
      const result = await write
      await vi.advanceTimersByTimeAsync(2000)
      return result
    })
    expect(outcome).toContain("timed out")
    expect(sent).toEqual([])
  })
})
