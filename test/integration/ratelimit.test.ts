import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type App, killAllApps, startApp } from "../support/app.js"
import { type RedisServer, startRedis } from "../support/redis.js"

/** Rate limits over real app processes: two instances share one count through Redis. */

let redis: RedisServer
let first: App
let second: App
let memory: App

const LIMITS = { RATE_LIMIT: "on", RATE_LIMIT_CLIENT: "6", RATE_LIMIT_VOTER: "2", RATE_LIMIT_WINDOW_MS: "60000" }

beforeAll(async () => {
  redis = await startRedis()
  // Both behind one trusted proxy: a request without X-Forwarded-For is the loopback client's own.
  const env = { POLL_STAGE: "redis", REDIS_URL: redis.url, TRUST_PROXY: "1", ...LIMITS }
  ;[first, second, memory] = await Promise.all([
    startApp({ env }),
    startApp({ env }),
    // The memory stage's default: no limits.
    startApp({ env: { POLL_STAGE: "memory", RATE_LIMIT: "auto" } })
  ])
}, 90_000)

afterAll(async () => {
  await killAllApps()
  await redis?.stop()
})

const vote = (app: App, pollId: string, body: Record<string, string>, headers: Record<string, string> = {}) =>
  app.request("POST", `/api/v1/vote/${pollId}`, JSON.stringify(body), headers)

describe("rate limits shared by two instances", () => {
  it("one client's requests count on both instances: the seventh of six is refused with 429 and its headers", async () => {
    // As one forwarded client (the loopback address has spent some of its quota on start-up health checks).
    const client = { "x-forwarded-for": "192.0.2.7" }
    const results = (app: App) => app.request("GET", "/api/v1/results/shared", undefined, client)
    const answers = []
    for (let i = 0; i < 6; i++) answers.push(await results(i % 2 === 0 ? first : second))
    expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200, 200, 200])
    expect(answers[0]!.headers.get("ratelimit-policy")).toBe('"client";q=6;w=60')
    expect(answers.map((a) => a.headers.get("ratelimit"))).toEqual(
      [0, 1, 2, 3, 4, 5].map((i) => expect.stringMatching(new RegExp(`^"client";r=${5 - i};t=\\d+$`)))
    )
    const refused = await results(second)
    expect(refused.status).toBe(429)
    expect(refused.json).toEqual({ error: "rate_limited", message: expect.stringContaining("client") })
    // One request comes back every 10 s (60 s / 6).
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(9)
    expect(Number(refused.headers.get("retry-after"))).toBeLessThanOrEqual(10)
    expect(refused.headers.get("ratelimit")).toMatch(/^"client";r=0;t=\d+$/)
    expect((await vote(first, "shared", { option_id: "A" }, client)).status).toBe(429)
    // A refused vote was not counted: nothing reached the store.
    expect(await redis.client().hgetall("poll:{shared}:counts")).toEqual({})
  })

  it("GET /, /metrics and the API document are not limited", async () => {
    for (const path of ["/", "/metrics", "/api/v1/openapi.json", "/", "/metrics", "/api/v1/openapi.json"]) {
      const reply = await first.request("GET", path)
      expect(reply.status, path).not.toBe(429)
      expect(reply.headers.get("ratelimit"), path).toBeNull()
    }
  })
})

describe("behind a trusted proxy", () => {
  const from = (address: string) => ({ "x-forwarded-for": `203.0.113.66, ${address}` })

  it("each forwarded client has its own quota, and what the client wrote further left does not count", async () => {
    const a = []
    for (let i = 0; i < 7; i++)
      a.push((await first.request("GET", "/api/v1/results/p", undefined, from("198.51.100.1"))).status)
    expect(a).toEqual([200, 200, 200, 200, 200, 200, 429])
    // Another client behind the same proxy (and the same forged leftmost entry) is not held up.
    expect((await first.request("GET", "/api/v1/results/p", undefined, from("198.51.100.2"))).status).toBe(200)
  })

  it("a voter's quota holds whatever address the votes come from, and is shared with the other instances", async () => {
    const body = { option_id: "A", voter_id: "repeat-voter" }
    const statuses = [
      (await vote(first, "voters", body, from("198.51.100.10"))).status,
      (await vote(second, "voters", body, from("198.51.100.11"))).status
    ]
    expect(statuses).toEqual([200, 200])
    const refused = await vote(first, "voters", body, from("198.51.100.12"))
    expect(refused.status).toBe(429)
    expect(refused.headers.get("ratelimit")).toMatch(/^"voter";r=0;t=\d+$/)
    expect(refused.json.message).toContain("voter")
    // Two votes counted, the refused ones not.
    expect(await redis.client().hgetall("poll:{voters}:counts")).toEqual({ A: "2" })
    // Another voter from the same address still votes.
    expect((await vote(second, "voters", { option_id: "A", voter_id: "other" }, from("198.51.100.12"))).status).toBe(
      200
    )
  })
})

describe("the memory stage", () => {
  it("has no limits by default", async () => {
    for (let i = 0; i < 40; i++) {
      const reply = await vote(memory, "free", { option_id: "A", voter_id: "same" })
      expect(reply.status).toBe(200)
      expect(reply.headers.get("ratelimit")).toBeNull()
    }
  })
})

describe("request ids", () => {
  it("are taken from traceparent, else X-Request-Id, else made fresh, and echoed on the answer", async () => {
    const trace = "0af7651916cd43dd8448eb211c80319c"
    const traced = await memory.request("GET", "/api/v1/results/p", undefined, {
      traceparent: `00-${trace}-b7ad6b7169203331-01`,
      "x-request-id": "ignored-when-traced"
    })
    expect(traced.headers.get("x-request-id")).toBe(trace)
    const named = await memory.request("GET", "/api/v1/results/p", undefined, { "x-request-id": "req-42" })
    expect(named.headers.get("x-request-id")).toBe("req-42")
    // Not a valid trace context (all-zero trace id), not a plain id: a fresh one each time.
    const hostile = { traceparent: `00-${"0".repeat(32)}-b7ad6b7169203331-01`, "x-request-id": "a b<script>" }
    const [x, y] = await Promise.all([0, 1].map(() => memory.request("GET", "/nope", undefined, hostile)))
    expect(x!.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/)
    expect(y!.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/)
    expect(x!.headers.get("x-request-id")).not.toBe(y!.headers.get("x-request-id"))
    expect(x!.status).toBe(404)
    // Answers written other than as a JSON reply carry it too: the page, a stream's head, the metrics.
    const page = await memory.request("GET", "/polls/p", undefined, { accept: "text/html", "x-request-id": "page-1" })
    expect([page.status, page.headers.get("x-request-id")]).toEqual([200, "page-1"])
    const stream = await memory.request("HEAD", "/api/v1/polls/p/stream", undefined, { "x-request-id": "stream-1" })
    expect([stream.status, stream.headers.get("x-request-id")]).toEqual([200, "stream-1"])
    const metrics = await memory.request("GET", "/metrics", undefined, { "x-request-id": "metrics-1" })
    expect([metrics.status, metrics.headers.get("x-request-id")]).toEqual([200, "metrics-1"])
  })
})
