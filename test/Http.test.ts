import { ConfigProvider, Context, Effect, ManagedRuntime, Runtime } from "effect"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { AppConfig } from "../src/Config.js"
import type { OptionId, PollId } from "../src/Domain.js"
import { makeHandler } from "../src/Http.js"
import { Polls, type PollsShape } from "../src/Polls.js"
import * as Stages from "../src/Stages.js"
import { VoteStore } from "../src/VoteStore.js"
import { type App, eventually, killAllApps, rawRequest, type Reply, startApp } from "./support/app.js"
import { type RedisServer, startRedis } from "./support/redis.js"

/** The contract's bound on a 503: answered within 2 s, never a hang. */
const UNAVAILABLE_WITHIN_MS = 2000

let memory: App
let redis: RedisServer
let redisApp: App

beforeAll(async () => {
  redis = await startRedis()
  ;[memory, redisApp] = await Promise.all([
    startApp({ env: { POLL_STAGE: "memory" } }),
    startApp({ env: { POLL_STAGE: "redis", REDIS_URL: redis.url } })
  ])
})

afterAll(async () => {
  await killAllApps()
  await redis?.stop()
})

const expectError = (reply: Reply, status: number, error?: string) => {
  expect({ status: reply.status, contentType: reply.headers.get("content-type") }).toEqual({
    status,
    contentType: expect.stringContaining("application/json")
  })
  expect(reply.json).toEqual({ error: error ?? expect.any(String), message: expect.any(String) })
  expect(reply.json.message.length).toBeGreaterThan(0)
}

const json = (body: unknown) => JSON.stringify(body)

describe("bad input", () => {
  const poll = "h-bad"

  it.each([
    ["invalid JSON", '{"option_id": "A"', "invalid_json"],
    ["a JSON string", '"A"', undefined],
    ["a JSON array", '["A"]', undefined],
    ["missing option_id", json({ option: "A" }), undefined],
    ["option_id a number", json({ option_id: 5 }), undefined],
    ["option_id null", json({ option_id: null }), undefined],
    ["option_id an array", json({ option_id: ["A"] }), undefined],
    ["option_id empty", json({ option_id: "" }), undefined],
    ["option_id of 65 characters", json({ option_id: "a".repeat(65) }), undefined],
    ["option_id with a space", json({ option_id: "A B" }), undefined],
    ["option_id with a slash", json({ option_id: "A/B" }), undefined],
    ["option_id with a non-ASCII letter", json({ option_id: "Ä" }), undefined],
    ["option_id with a colon", json({ option_id: "A:B" }), undefined],
    ["a whitespace body", "  \n ", undefined]
  ])("%s is a 400", async (_, body, error) => {
    expectError(await memory.request("POST", `/api/v1/vote/${poll}`, body), 400, error)
  })

  it("an empty body is a 400", async () => {
    expectError(await memory.request("POST", `/api/v1/vote/${poll}`), 400)
    expectError(await memory.request("POST", `/api/v1/vote/${poll}`, ""), 400)
  })

  it.each([
    ["a space", "p%20x"],
    ["a dollar sign", "p$x"],
    ["a tilde", "p~x"],
    ["a non-ASCII letter", "p%C3%A4"],
    ["65 characters", "p".repeat(65)]
  ])("a poll_id with %s is a 400 on vote and results", async (_, pollId) => {
    expectError(await memory.request("POST", `/api/v1/vote/${pollId}`, json({ option_id: "A" })), 400)
    expectError(await memory.request("GET", `/api/v1/results/${pollId}`), 400)
    expectError(await memory.request("POST", `/vote/${pollId}`, json({ option_id: "A" })), 400)
  })

  it("64-character ids at the limit are accepted", async () => {
    const pollId = "p".repeat(64)
    expect((await memory.vote(pollId, "o".repeat(64))).status).toBe(200)
    expect((await memory.results(pollId)).json.results).toEqual({ ["o".repeat(64)]: 1 })
  })

  it("a body over 16 KiB with a content-length is a 413", async () => {
    for (const size of [17 * 1024, 1024 * 1024]) {
      const big = json({ option_id: "A", padding: "x".repeat(size) })
      expectError(await memory.request("POST", `/api/v1/vote/${poll}`, big), 413, "payload_too_large")
    }
  })

  it("a chunked body over 16 KiB is a 413", async () => {
    const chunked = await rawRequest(memory.port, {
      method: "POST",
      path: `/api/v1/vote/${poll}`,
      headers: { "transfer-encoding": "chunked" },
      chunks: ['{"option_id":"A","padding":"', ...Array.from({ length: 17 }, () => "x".repeat(1024)), '"}']
    })
    expectError(chunked, 413, "payload_too_large")
  })

  it("a client still streaming a chunked body past 16 KiB gets its 413, not a reset connection", async () => {
    // 64 KiB in 1 KiB chunks: the client is still writing when the limit is passed.
    const encoder = new TextEncoder()
    let sent = 0
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent === 0) controller.enqueue(encoder.encode('{"option_id":"A","padding":"'))
        else if (sent <= 64) controller.enqueue(encoder.encode("x".repeat(1024)))
        else {
          controller.enqueue(encoder.encode('"}'))
          controller.close()
        }
        sent++
      }
    })
    expectError(await memory.request("POST", `/api/v1/vote/${poll}`, stream), 413, "payload_too_large")
  })

  it("a body just under 16 KiB is accepted", async () => {
    const body = json({ option_id: "A", padding: "" })
    const padded = json({ option_id: "A", padding: "x".repeat(16 * 1024 - body.length) })
    expect(Buffer.byteLength(padded)).toBe(16 * 1024)
    const reply = await memory.request("POST", "/api/v1/vote/h-big-ok", padded)
    expect(reply.status).toBe(200)
    expect((await memory.results("h-big-ok")).json.results).toEqual({ A: 1 })
  })

  it("none of the rejected votes was counted", async () => {
    expect((await memory.results(poll)).json).toEqual({ poll_id: poll, results: {}, served_via: "in_memory" })
    // The 65-character poll ids counted nothing, not even under the id cut to 64.
    expect((await memory.results("p".repeat(64))).json.results).toEqual({ ["o".repeat(64)]: 1 })
  })
})

describe("routing", () => {
  it.each([
    ["GET", "/nope"],
    ["GET", "/api/v1/nope"],
    ["POST", "/api/v2/vote/h-1"],
    ["GET", "/vote"],
    ["GET", "/results"],
    ["GET", "/api/v1/results/h-1/extra"]
  ])("%s %s is a 404", async (method, path) => {
    expectError(await memory.request(method, path), 404, "not_found")
  })

  it.each([
    ["GET", "/api/v1/vote/h-1"],
    ["GET", "/vote/h-1"],
    ["PUT", "/api/v1/vote/h-1"],
    ["DELETE", "/api/v1/results/h-1"],
    ["POST", "/results/h-1"],
    ["POST", "/"],
    ["POST", "/api/v1/health"],
    ["DELETE", "/health"]
  ])("%s %s is a 405", async (method, path) => {
    const body = method === "GET" || method === "DELETE" ? undefined : json({ option_id: "A" })
    expectError(await memory.request(method, path, body), 405, "method_not_allowed")
  })

  it("the wrong method counts nothing", async () => {
    expect((await memory.results("h-1")).json.results).toEqual({})
  })

  it("serves every route bare and under /api/v1", async () => {
    expect((await memory.request("POST", "/vote/h-route", json({ option_id: "A" }))).json).toEqual({
      poll_id: "h-route",
      option_id: "A"
    })
    expect((await memory.request("POST", "/api/v1/vote/h-route", json({ option_id: "A" }))).status).toBe(200)
    const bare = await memory.request("GET", "/results/h-route")
    const versioned = await memory.request("GET", "/api/v1/results/h-route")
    expect(bare.json).toEqual({ poll_id: "h-route", results: { A: 2 }, served_via: "in_memory" })
    expect(versioned.json).toEqual(bare.json)
    expect((await memory.request("GET", "/health")).json).toEqual((await memory.request("GET", "/api/v1/health")).json)
  })

  it("GET / is the liveness answer", async () => {
    const reply = await memory.request("GET", "/")
    expect(reply.status).toBe(200)
    expect(reply.headers.get("content-type")).toContain("application/json")
    expect(reply.json).toEqual({ status: "healthy" })
  })

  it("health reports the store's nodes and the pending votes", async () => {
    const reply = await memory.request("GET", "/api/v1/health")
    expect(reply.status).toBe(200)
    expect(reply.json).toEqual({
      status: "ok",
      nodes: [{ name: "in_memory", reachable: true }],
      pending_votes: 0
    })
  })

  it.each([
    ["application/json", "application/json"],
    ["text/plain", "text/plain"],
    ["form encoded", "application/x-www-form-urlencoded"],
    ["octet-stream", "application/octet-stream"],
    ["no content type", undefined]
  ])("accepts a vote sent as %s", async (_, contentType) => {
    const poll = `h-ct-${contentType?.replace(/[^a-z]/g, "") ?? "none"}`
    const reply = await rawRequest(memory.port, {
      method: "POST",
      path: `/api/v1/vote/${poll}`,
      headers: contentType === undefined ? {} : { "content-type": contentType },
      chunks: [json({ option_id: "A" })]
    })
    expect(reply.status).toBe(200)
    expect(reply.json).toEqual({ poll_id: poll, option_id: "A" })
    expect((await memory.results(poll)).json.results).toEqual({ A: 1 })
  })

  it("ignores extra fields in the body", async () => {
    expect((await memory.request("POST", "/api/v1/vote/h-extra", json({ option_id: "B", x: 1 }))).status).toBe(200)
    expect((await memory.results("h-extra")).json.results).toEqual({ B: 1 })
  })
})

describe("option cap", () => {
  it("refuses the 257th distinct option of a poll with 422 and keeps counting the 256", async () => {
    const poll = "h-cap"
    const options = Array.from({ length: 256 }, (_, i) => `o${i}`)
    for (let i = 0; i < options.length; i += 32) {
      const replies = await Promise.all(options.slice(i, i + 32).map((o) => memory.vote(poll, o)))
      expect(replies.map((r) => r.status)).toEqual(replies.map(() => 200))
    }
    expectError(await memory.vote(poll, "o256"), 422, "too_many_options")
    expect((await memory.vote(poll, "o0")).status).toBe(200)
    const counts = (await memory.results(poll)).json.results as Record<string, number>
    expect(Object.keys(counts)).toHaveLength(256)
    expect(counts["o256"]).toBeUndefined()
    expect(counts["o0"]).toBe(2)
    expect(counts["o255"]).toBe(1)
  })
})

describe("store unavailable", () => {
  const timed = async (run: () => Promise<Reply>) => {
    const started = Date.now()
    const reply = await run()
    return { reply, elapsed: Date.now() - started }
  }

  it("answers 503 quickly while Redis is down, keeps GET / alive, and recovers without a restart", async () => {
    const raw = redis.client()
    expect((await redisApp.vote("h-down", "A")).status).toBe(200)
    expect((await redisApp.request("GET", "/api/v1/health")).json).toEqual({
      status: "ok",
      nodes: [{ name: "redis", reachable: true }],
      pending_votes: 0
    })
    raw.disconnect()
    await redis.halt()

    const vote = await timed(() => redisApp.vote("h-down", "A"))
    expectError(vote.reply, 503, "store_unavailable")
    expect(vote.elapsed).toBeLessThan(UNAVAILABLE_WITHIN_MS)

    const results = await timed(() => redisApp.results("h-down"))
    expectError(results.reply, 503, "store_unavailable")
    expect(results.elapsed).toBeLessThan(UNAVAILABLE_WITHIN_MS)

    const health = await timed(() => redisApp.request("GET", "/api/v1/health"))
    expect(health.elapsed).toBeLessThan(UNAVAILABLE_WITHIN_MS)
    expect(health.reply.status).toBe(503)
    expect(health.reply.json).toEqual({
      status: expect.any(String),
      nodes: [{ name: "redis", reachable: false }],
      pending_votes: 0
    })

    const live = await redisApp.request("GET", "/")
    expect(live.status).toBe(200)
    expect(live.json).toEqual({ status: "healthy" })

    // Several requests at once while down: every one is a prompt 503, none hangs.
    const burst = await timed(() =>
      Promise.all(Array.from({ length: 10 }, () => redisApp.vote("h-down", "B"))).then((replies) => {
        for (const reply of replies) expectError(reply, 503, "store_unavailable")
        return replies[0]!
      })
    )
    expect(burst.elapsed).toBeLessThan(UNAVAILABLE_WITHIN_MS)

    await redis.start()
    const recovered = await eventually(
      async () => {
        const reply = await redisApp.vote("h-down", "A")
        return reply.status === 200 ? reply : undefined
      },
      { timeoutMs: 8000, intervalMs: 100, what: "a successful vote after redis came back" }
    )
    expect(recovered.json).toEqual({ poll_id: "h-down", option_id: "A" })
    expect((await redisApp.results("h-down")).json).toEqual({
      poll_id: "h-down",
      results: { A: 2 },
      served_via: "redis"
    })
    expect(await redis.client().hgetall("poll:{h-down}:counts")).toEqual({ A: "2" })
    expect((await redisApp.request("GET", "/api/v1/health")).status).toBe(200)
  })
})

describe("unexpected failures", () => {
  let server: Server
  let base: string
  let managed: ManagedRuntime.ManagedRuntime<any, any>

  // The handler in this process, over the memory stage with two bugs planted: looking up poll `throws` throws (a
  // synchronous throw, reached both inside the request handler and inside the body callback), and a vote on poll
  // `dies` is a defect.
  beforeAll(async () => {
    const config = await Effect.runPromise(Effect.withConfigProvider(AppConfig, ConfigProvider.fromMap(new Map())))
    managed = ManagedRuntime.make(Stages.compositions.memory(config))
    const runtime = await managed.runtime()
    const polls = Context.get(runtime.context, Polls)
    const store = Context.get(runtime.context, VoteStore)
    const get = ((pollId: PollId, ...rest: Array<never>) => {
      if (pollId === "throws") throw new Error("a planted bug")
      return (polls.get as (...args: Array<unknown>) => unknown)(pollId, ...rest)
    }) as PollsShape["get"]
    const vote = (pollId: PollId, optionId: OptionId) =>
      pollId === "dies" ? Effect.die(new Error("a planted defect")) : store.vote(pollId, optionId)
    const context = runtime.context.pipe(
      Context.add(Polls, { ...polls, get }),
      Context.add(VoteStore, { ...store, vote })
    )
    const planted = Runtime.make({ context, runtimeFlags: runtime.runtimeFlags, fiberRefs: runtime.fiberRefs })
    const { handler } = makeHandler(planted, { maxStreams: 10, answered: new WeakSet() })
    server = createServer(handler)
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  })

  afterAll(async () => {
    server?.closeAllConnections()
    await new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve())))
    await managed?.dispose()
  })

  const call = async (method: string, path: string, body?: string) => {
    const response = await fetch(`${base}${path}`, body === undefined ? { method } : { method, body })
    const text = await response.text()
    return { status: response.status, contentType: response.headers.get("content-type"), json: JSON.parse(text) }
  }

  it.each([
    ["a throw while the request is routed", "GET", "/api/v1/results/throws", undefined],
    ["a throw once the body is in", "POST", "/api/v1/vote/throws", JSON.stringify({ option_id: "A" })],
    ["a defect in the request's effect", "POST", "/api/v1/vote/dies", JSON.stringify({ option_id: "A" })]
  ])("%s answers 503 internal_error (no other 5xx), and the server carries on", async (_, method, path, body) => {
    expect(await call(method, path, body)).toEqual({
      status: 503,
      contentType: "application/json",
      json: { error: "internal_error", message: expect.any(String) }
    })
    expect((await call("POST", "/api/v1/vote/fine", JSON.stringify({ option_id: "A" }))).status).toBe(200)
    expect((await call("GET", "/api/v1/results/fine")).status).toBe(200)
  })
})
