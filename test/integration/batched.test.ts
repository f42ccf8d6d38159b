import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type App, killAllApps, startApp } from "../support/app.js"
import { eventually } from "../support/wait.js"
import { type RedisServer, startRedis } from "../support/redis.js"

const FLUSH_MS = 600

let redis: RedisServer
/** Flushes every FLUSH_MS. */
let app: App
/** Never flushes on its own during the test: only shutdown writes its buffer out. */
let holding: App

const sum = (counts: Record<string, string | number>) =>
  Object.values(counts).reduce<number>((s, n) => s + Number(n), 0)

beforeAll(async () => {
  redis = await startRedis()
  const env = { POLL_STAGE: "batched", REDIS_URL: redis.url }
  ;[app, holding] = await Promise.all([
    startApp({ env: { ...env, FLUSH_INTERVAL_MS: String(FLUSH_MS) } }),
    startApp({ env: { ...env, FLUSH_INTERVAL_MS: "600000" } })
  ])
})

afterAll(async () => {
  await killAllApps()
  await redis?.stop()
})

describe("batched stage", () => {
  it("buffers votes, counts them in reads at once, and writes them to redis on the next flush", async () => {
    const raw = redis.client()
    // Line up with the flush loop: right after a flush the next one is a whole interval away.
    const mark = app.lines.length
    expect((await app.vote("b-warm", "A")).status).toBe(200)
    await app.waitForLine(/flush: 1 votes over 1 polls applied/, { from: mark, timeoutMs: FLUSH_MS * 5 })
    expect(await raw.hgetall("poll:{b-warm}:counts")).toEqual({ A: "1" })

    for (const option of ["A", "B", "A"]) expect((await app.vote("b-1", option)).status).toBe(200)
    expect(await raw.exists("poll:{b-1}:counts")).toBe(0)
    expect((await app.results("b-1")).json).toEqual({ poll_id: "b-1", results: { A: 2, B: 1 }, served_via: "redis" })
    expect((await app.request("GET", "/api/v1/health")).json.pending_votes).toBe(3)

    const flushed = await eventually(
      async () => {
        const counts = await raw.hgetall("poll:{b-1}:counts")
        return Object.keys(counts).length > 0 ? counts : undefined
      },
      { timeoutMs: FLUSH_MS * 5, what: "the flush of poll b-1" }
    )
    expect(flushed).toEqual({ A: "2", B: "1" })
    // Once flushed, the votes are read from redis alone and not added a second time.
    expect((await app.results("b-1")).json).toEqual({ poll_id: "b-1", results: { A: 2, B: 1 }, served_via: "redis" })
    await eventually(async () =>
      (await app.request("GET", "/api/v1/health")).json.pending_votes === 0 ? true : undefined
    )
    expect((await app.results("b-1")).json.results).toEqual({ A: 2, B: 1 })
  })

  it("accepts 500 concurrent votes from 20 clients and stores exactly 500", async () => {
    const raw = redis.client()
    const options = ["A", "B", "C", "D", "E"]
    const statuses: Array<number> = []
    await Promise.all(
      Array.from({ length: 20 }, async (_, client) => {
        for (let i = 0; i < 25; i++) {
          const reply = await app.vote("b-many", options[(client * 25 + i) % options.length]!)
          statuses.push(reply.status)
        }
      })
    )
    expect(statuses).toHaveLength(500)
    expect(statuses.filter((s) => s !== 200)).toEqual([])
    expect(sum((await app.results("b-many")).json.results)).toBe(500)

    await eventually(async () => (sum(await raw.hgetall("poll:{b-many}:counts")) === 500 ? true : undefined), {
      timeoutMs: FLUSH_MS * 5,
      what: "500 votes in redis"
    })
    expect(await app.stop()).toBe(0)
    expect(await raw.hgetall("poll:{b-many}:counts")).toEqual({ A: "100", B: "100", C: "100", D: "100", E: "100" })
  })

  it("flushes the whole buffer on SIGTERM and exits 0", async () => {
    const raw = redis.client()
    const polls = ["b-term-1", "b-term-2", "b-term-3"]
    for (let i = 0; i < 30; i++) expect((await holding.vote(polls[i % 3]!, i % 2 === 0 ? "X" : "Y")).status).toBe(200)
    for (const poll of polls) expect(await raw.exists(`poll:{${poll}}:counts`)).toBe(0)
    expect((await holding.request("GET", "/api/v1/health")).json.pending_votes).toBe(30)

    expect(await holding.stop("SIGTERM")).toBe(0)
    expect(holding.output()).toMatch(/shutdown flush complete/)
    expect(await raw.hgetall("poll:{b-term-1}:counts")).toEqual({ X: "5", Y: "5" })
    expect(await raw.hgetall("poll:{b-term-2}:counts")).toEqual({ X: "5", Y: "5" })
    expect(await raw.hgetall("poll:{b-term-3}:counts")).toEqual({ X: "5", Y: "5" })
  })
})
