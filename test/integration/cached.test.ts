import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type App, killAllApps, startApp } from "../support/app.js"
import { eventually } from "../support/wait.js"
import { type RedisServer, startRedis } from "../support/redis.js"

const TTL_MS = 400

let redis: RedisServer
let app: App

beforeAll(async () => {
  redis = await startRedis()
  app = await startApp({ env: { POLL_STAGE: "cached", REDIS_URL: redis.url, CACHE_TTL_MS: String(TTL_MS) } })
})

afterAll(async () => {
  await killAllApps()
  await redis?.stop()
})

describe("cached stage", () => {
  it("serves a snapshot from the app cache for CACHE_TTL_MS, then reads redis again", async () => {
    const raw = redis.client()
    expect((await app.vote("c-1", "A")).status).toBe(200)
    expect((await app.vote("c-1", "A")).status).toBe(200)

    const missAt = Date.now()
    const miss = await app.results("c-1")
    expect(miss.json).toEqual({ poll_id: "c-1", results: { A: 2 }, served_via: "redis" })

    // Votes go to redis at once; the cached snapshot does not see them until it expires.
    expect((await app.vote("c-1", "B")).status).toBe(200)
    expect(await raw.hgetall("poll:{c-1}:counts")).toEqual({ A: "2", B: "1" })
    const hit = await app.results("c-1")
    const hitAt = Date.now()
    expect(hitAt - missAt).toBeLessThan(TTL_MS)
    expect(hit.json).toEqual({ poll_id: "c-1", results: { A: 2 }, served_via: "app_cache" })

    const fresh = await eventually(
      async () => {
        const reply = await app.results("c-1")
        return reply.json.served_via === "redis" ? { reply, at: Date.now() } : undefined
      },
      { timeoutMs: TTL_MS * 5, what: "a read served by redis again" }
    )
    expect(fresh.at - missAt).toBeGreaterThanOrEqual(TTL_MS - 50)
    expect(fresh.reply.json).toEqual({ poll_id: "c-1", results: { A: 2, B: 1 }, served_via: "redis" })
    expect((await app.results("c-1")).json.served_via).toBe("app_cache")
    expect(await raw.hgetall("poll:{c-1}:counts")).toEqual({ A: "2", B: "1" })
  })

  it("caches each poll on its own", async () => {
    await app.vote("c-2", "A")
    expect((await app.results("c-2")).json.served_via).toBe("redis")
    expect((await app.results("c-2")).json.served_via).toBe("app_cache")
    await app.vote("c-3", "A")
    expect((await app.results("c-3")).json).toEqual({ poll_id: "c-3", results: { A: 1 }, served_via: "redis" })
  })

  it("exits 0 on SIGTERM", async () => {
    expect(await app.stop()).toBe(0)
  })
})
