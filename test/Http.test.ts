import { ConfigProvider, Context, Effect, Layer, ManagedRuntime, Runtime } from "effect"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { AppConfig } from "../src/Config.js"
import type { OptionId, PollId } from "../src/Domain.js"
import * as Http from "../src/Http.js"
import { makeHandler } from "../src/Http.js"
import { rawAnswer } from "../src/Http/Reply.js"
import * as Feed from "../src/Feed.js"
import * as PollsModule from "../src/Polls.js"
import { Polls, type PollsShape } from "../src/Polls.js"
import * as Stages from "../src/Stages.js"
import * as VoteStoreModule from "../src/VoteStore.js"
import { VoteStore } from "../src/VoteStore.js"
import { type App, killAllApps, rawRequest, type Reply, startApp } from "./support/app.js"
import { eventually } from "./support/wait.js"
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

// ---------------------------------------------------------------------------------------------------------------------
// In process: the route table and the handlers, with no server in between.

/** The API as the contract lists it, written out here rather than read from the table it checks. */
const API: ReadonlyArray<readonly [method: "GET" | "POST", path: string, tag: string, pollId: string | undefined]> = [
  ["GET", "/", "Root", undefined],
  ["GET", "/health", "Health", undefined],
  ["POST", "/vote/p-1", "Vote", "p-1"],
  ["GET", "/results/p-1", "Results", "p-1"],
  ["POST", "/polls", "CreatePoll", undefined],
  ["GET", "/polls", "ListPolls", undefined],
  ["GET", "/polls/p-1", "GetPoll", "p-1"],
  ["POST", "/polls/p-1/close", "ClosePoll", "p-1"],
  ["GET", "/polls/p-1/stream", "Stream", "p-1"],
  ["GET", "/polls/p-1/results.csv", "ExportCsv", "p-1"],
  ["GET", "/polls/p-1/results.json", "ExportJson", "p-1"],
  ["GET", "/metrics", "Metrics", undefined],
  ["GET", "/openapi.json", "OpenApi", undefined],
  ["GET", "/docs", "Docs", undefined],
  ["GET", "/docs/swagger-ui.js", "DocsScript", undefined],
  ["GET", "/docs/swagger-ui.css", "DocsStyle", undefined]
]
const PREFIXES = ["", "/api/v1"] as const
const withPrefix = (prefix: string, path: string) => (prefix !== "" && path === "/" ? prefix : `${prefix}${path}`)
const rejected = (r: Http.Route) => {
  if (r._tag !== "Reject") throw new Error(`expected a refusal, got ${r._tag}`)
  return r.reply
}

describe("the route table, in process", () => {
  it("lists exactly the contract's routes", () => {
    expect(Http.ROUTES.map(([method, path, tag]) => [method, path.replace("{id}", "p-1"), tag])).toEqual(
      API.map(([method, path, tag]) => [method, path, tag])
    )
  })

  describe.each(PREFIXES)("under '%s'", (prefix) => {
    it.each(API)("%s %s routes to its handler, with a trailing slash and a query too", (method, path, tag, pollId) => {
      const expected = pollId === undefined ? { _tag: tag } : { _tag: tag, pollId }
      const withPage = tag === "GetPoll" ? { ...expected, page: false } : expected
      for (const url of [withPrefix(prefix, path), `${withPrefix(prefix, path)}/`, `${withPrefix(prefix, path)}?a=1`]) {
        expect(Http.route(method, url.replace("//", "/"))).toEqual(withPage)
      }
    })

    /** The methods a path answers, in the contract's order, HEAD after GET. */
    const allowedOn = (path: string) =>
      API.filter((e) => e[1] === path).flatMap(([m]) => (m === "GET" ? ["GET", "HEAD"] : [m]))

    it.each(API)("%s %s: HEAD is GET on a GET route and a 405 on a POST-only path", (method, path, tag, pollId) => {
      const r = Http.route("HEAD", withPrefix(prefix, path))
      if (allowedOn(path).includes("GET")) {
        const get = API.find((e) => e[1] === path && e[0] === "GET")!
        expect(r._tag).toBe(get[2])
        if (pollId !== undefined) expect(r).toMatchObject({ pollId })
      } else {
        expect(method).toBe("POST")
        expect(tag).not.toBe(r._tag)
        expect(rejected(r)).toMatchObject({ status: 405, headers: { allow: "POST" } })
      }
    })

    it.each(API)("%s %s: any other method is a 405 naming the allowed ones", (_, path) => {
      const url = withPrefix(prefix, path)
      const allowed = allowedOn(path)
      for (const other of ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"].filter((m) => !allowed.includes(m))) {
        expect(rejected(Http.route(other, url))).toEqual({
          status: 405,
          body: {
            error: "method_not_allowed",
            message: `${other} is not allowed on ${url}; use ${allowed.join(" or ")}`
          },
          headers: { allow: allowed.join(", ") }
        })
      }
    })

    it.each([
      "/nope",
      "/vote",
      "/results",
      "/vote/p-1/extra",
      "/results/p-1/extra",
      "/polls/p-1/open",
      "/polls/p-1/close/now",
      "/health/x",
      "/results//p-1",
      "/api/v2/vote/p-1"
    ])("%s is a 404 for every method", (path) => {
      const url = withPrefix(prefix, path)
      for (const method of ["GET", "HEAD", "POST", "PUT"]) {
        expect(rejected(Http.route(method, url))).toEqual({
          status: 404,
          body: { error: "not_found", message: `no route ${url}` }
        })
      }
    })
  })

  it("passes ids on as sent: a handler decodes them, so an escape that does not decode is its 400, not a 404", () => {
    expect(Http.route("GET", "/results/p%2D1")).toEqual({ _tag: "Results", pollId: "p%2D1" })
    expect(Http.route("POST", "/api/v1/vote/%ZZ")).toEqual({ _tag: "Vote", pollId: "%ZZ" })
    expect(Http.route("POST", "/vote//")).toEqual({ _tag: "Vote", pollId: "" })
  })

  it("serves the page only on bare GET /polls/{id} from a browser", () => {
    const html = "text/html,application/xhtml+xml"
    expect(Http.route("GET", "/polls/p-1", html)).toEqual({ _tag: "GetPoll", pollId: "p-1", page: true })
    expect(Http.route("HEAD", "/polls/p-1", html)).toEqual({ _tag: "GetPoll", pollId: "p-1", page: true })
    expect(Http.route("GET", "/api/v1/polls/p-1", html)).toEqual({ _tag: "GetPoll", pollId: "p-1", page: false })
    expect(Http.route("GET", "/polls/p-1", "application/json")).toEqual({ _tag: "GetPoll", pollId: "p-1", page: false })
  })

  it("takes /api/v1 as a prefix only as a whole segment", () => {
    expect(rejected(Http.route("GET", "/api/v1health")).status).toBe(404)
    expect(Http.route("GET", "/api/v1")).toEqual({ _tag: "Root" })
    expect(Http.route("GET", "/api/v1/")).toEqual({ _tag: "Root" })
  })
})

describe("refusals, in process", () => {
  it.each([
    [new Http.InvalidJson({ message: "m" }), 400, "invalid_json"],
    [new Http.InvalidRequest({ message: "m" }), 400, "invalid_request"],
    [new Http.InvalidPollId({ message: "m" }), 400, "invalid_poll_id"],
    [new Http.InvalidPoll({ message: "m" }), 400, "invalid_poll"],
    [new Http.RouteNotFound({ path: "/x" }), 404, "not_found"],
    [new Http.MethodNotAllowed({ method: "PUT", path: "/x", allow: ["POST"] }), 405, "method_not_allowed"],
    [new Http.PayloadTooLarge({ message: "m" }), 413, "payload_too_large"],
    [new Http.ExpectationFailed(), 417, "expectation_failed"],
    [new Http.RequestTimeout({ headersTimeoutMs: 1, requestTimeoutMs: 2 }), 408, "request_timeout"],
    [new Http.HeadersTooLarge({ limit: 16384 }), 431, "headers_too_large"],
    [new Http.BadRequest({ message: "m" }), 400, "bad_request"],
    [new Http.TooManyStreams(), 503, "too_many_streams"],
    [new Http.TooManyConnections({ limit: 10 }), 503, "too_many_connections"],
    [new Http.InternalError(), 503, "internal_error"]
  ])("%s is a %i %s in JSON", (error, status, code) => {
    const reply = Http.fromError(error)
    expect(reply).toMatchObject({ status, body: { error: code, message: error.message } })
    expect(error.message.length).toBeGreaterThan(0)
  })

  it("a message that quotes the request is cut to 300 characters", () => {
    const reply = Http.fromError(new Http.RouteNotFound({ path: `/${"x".repeat(1000)}` }))
    expect((reply.body as { message: string }).message).toHaveLength(300)
  })

  it("the listener's raw answer is the same reply, written as a complete HTTP/1.1 response that closes", () => {
    const answer = rawAnswer(new Http.TooManyConnections({ limit: 10 }))
    const body = JSON.stringify({
      error: "too_many_connections",
      message: "this instance holds as many connections as it can (10); try again shortly"
    })
    expect(answer).toBe(
      "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n" +
        `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`
    )
    expect(rawAnswer(new Http.PayloadTooLarge({ message: "m" })).match(/connection: close/g)).toHaveLength(1)
  })
})

describe("handlers over the memory layers, in process", () => {
  const layers = Layer.mergeAll(VoteStoreModule.layerMemory, PollsModule.layerMemory(100), Feed.layerLocal)
  /** Runs `use` over a fresh set of memory layers. */
  const withApi = <A>(use: (api: ReturnType<typeof Http.makeApi>) => Effect.Effect<A>) =>
    Effect.runPromise(
      Effect.gen(function* () {
        const api = Http.makeApi({
          store: yield* VoteStore,
          polls: yield* Polls,
          feed: yield* Feed.Feed,
          clock: yield* Effect.clock
        })
        return yield* use(api)
      }).pipe(Effect.provide(layers))
    )
  const draft = (id: string, extra: object = {}) =>
    json({
      id,
      question: "Q?",
      options: [
        { id: "A", label: "a" },
        { id: "B", label: "b" }
      ],
      ...extra
    })

  it("a vote is counted and read back", async () => {
    const [voted, results] = await withApi((api) =>
      Effect.all([
        api.vote("ip-1", json({ option_id: "A" })),
        Effect.zipRight(api.vote("ip-1", json({ option_id: "A" })), api.results("ip-1"))
      ])
    )
    expect(voted).toEqual({ status: 200, body: { poll_id: "ip-1", option_id: "A" } })
    expect(results).toEqual({ status: 200, body: { poll_id: "ip-1", results: { A: 2 }, served_via: "in_memory" } })
  })

  it.each([
    ["invalid JSON", "p", '{"option_id"', 400, "invalid_json"],
    ["a body nested too deep", "p", `${"[".repeat(65)}${"]".repeat(65)}`, 400, "invalid_json"],
    ["an empty body", "p", " ", 400, "invalid_request"],
    ["a body without option_id", "p", json({ option: "A" }), 400, "invalid_request"],
    ["an escape that does not decode", "%ZZ", json({ option_id: "A" }), 400, "invalid_poll_id"],
    ["a poll id with a space", "p%20x", json({ option_id: "A" }), 400, "invalid_poll_id"]
  ])("a vote with %s is refused with its code and counts nothing", async (_, pollId, body, status, code) => {
    const [reply, results] = await withApi((api) => Effect.all([api.vote(pollId, body), api.results("p")]))
    expect(reply).toEqual({ status, body: { error: code, message: expect.any(String) } })
    expect(results.body).toMatchObject({ results: {} })
  })

  it("a percent-encoded poll id is decoded", async () => {
    const reply = await withApi((api) => api.vote("ip%2D2", json({ option_id: "A" })))
    expect(reply).toEqual({ status: 200, body: { poll_id: "ip-2", option_id: "A" } })
  })

  it("a poll is defined, read, guarded by its organiser key and closed", async () => {
    const replies = await withApi((api) =>
      Effect.gen(function* () {
        const created = yield* api.createPoll(draft("ip-poll", { one_vote_per_voter: true }))
        const key = (created.body as { organiser_key: string }).organiser_key
        return {
          created,
          got: yield* api.getPoll("ip-poll"),
          missing: yield* api.getPoll("ip-none"),
          again: yield* api.createPoll(draft("ip-poll")),
          invalid: yield* api.createPoll(json({ question: "Q?", options: [] })),
          voterless: yield* api.vote("ip-poll", json({ option_id: "A" })),
          unknown: yield* api.vote("ip-poll", json({ option_id: "C", voter_id: "v1" })),
          noKey: yield* api.closePoll("ip-poll", undefined),
          wrongKey: yield* api.closePoll("ip-poll", "Bearer nope"),
          closed: yield* api.closePoll("ip-poll", `Bearer ${key}`),
          late: yield* api.vote("ip-poll", json({ option_id: "A", voter_id: "v1" }))
        }
      })
    )
    expect(replies.created).toMatchObject({ status: 201, body: { id: "ip-poll", open: true, closed: false } })
    expect(replies.got).toMatchObject({ status: 200, body: { id: "ip-poll", question: "Q?", open: true } })
    expect(replies.got.body).not.toHaveProperty("organiser_key")
    const refused = (status: number, error: string) => ({ status, body: { error, message: expect.any(String) } })
    expect(replies.missing).toEqual(refused(404, "poll_not_found"))
    expect(replies.again).toEqual(refused(409, "poll_exists"))
    expect(replies.invalid).toEqual(refused(400, "invalid_poll"))
    expect(replies.voterless).toEqual(refused(400, "voter_required"))
    expect(replies.unknown).toEqual(refused(422, "unknown_option"))
    expect(replies.noKey).toEqual({
      ...refused(401, "organiser_key_required"),
      headers: { "www-authenticate": 'Bearer realm="livepoll"' }
    })
    expect(replies.wrongKey).toEqual(refused(403, "wrong_organiser_key"))
    expect(replies.closed).toMatchObject({ status: 200, body: { id: "ip-poll", closed: true, open: false } })
    expect(replies.late).toEqual(refused(409, "poll_closed"))
  })

  it("health is ok over the memory store", async () => {
    expect(await withApi((api) => api.health)).toEqual({
      status: 200,
      body: { status: "ok", nodes: [{ name: "in_memory", reachable: true }], pending_votes: 0 }
    })
  })
})
