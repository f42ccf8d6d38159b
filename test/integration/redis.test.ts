import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { killAllApps, startApp } from "../support/app.js"
import { type RedisServer, startRedis } from "../support/redis.js"

let redis: RedisServer

beforeAll(async () => {
  redis = await startRedis()
})

afterAll(async () => {
  await killAllApps()
  await redis?.stop()
})

describe("redis stage", () => {
  it("writes each vote to the poll's hash at once, serves reads from redis, and keeps counts across restarts", async () => {
    const raw = redis.client()
    const env = { POLL_STAGE: "redis", REDIS_URL: redis.url }
    const first = await startApp({ env })

    expect((await first.vote("r-1", "A")).status).toBe(200)
    expect(await raw.hgetall("poll:{r-1}:counts")).toEqual({ A: "1" })
    expect((await first.vote("r-1", "B")).status).toBe(200)
    expect((await first.vote("r-1", "A")).status).toBe(200)
    expect(await raw.hgetall("poll:{r-1}:counts")).toEqual({ A: "2", B: "1" })

    expect((await first.results("r-1")).json).toEqual({ poll_id: "r-1", results: { A: 2, B: 1 }, served_via: "redis" })
    expect((await first.results("r-never")).json).toEqual({ poll_id: "r-never", results: {}, served_via: "redis" })
    expect(await raw.exists("poll:{r-never}:counts")).toBe(0)
    expect(await first.stop()).toBe(0)

    const second = await startApp({ env })
    expect((await second.results("r-1")).json).toEqual({ poll_id: "r-1", results: { A: 2, B: 1 }, served_via: "redis" })
    expect((await second.vote("r-1", "B")).status).toBe(200)
    expect(await raw.hgetall("poll:{r-1}:counts")).toEqual({ A: "2", B: "2" })
    expect(await second.stop()).toBe(0)
  })
})
