import { execFile } from "node:child_process"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Ring from "../src/Ring.js"
import { killAllApps, runToExit, startApp } from "./support/app.js"
import { type RedisServer, startRedis } from "./support/redis.js"

let a: RedisServer
let b: RedisServer

const built = async (env: Record<string, string>) => startApp({ built: true, env })

beforeAll(async () => {
  const build = new Promise<{ code: number | null; output: string }>((resolve) =>
    execFile("npm", ["run", "--silent", "build"], (error, stdout, stderr) =>
      resolve({ code: error === null ? 0 : (error.code as number | null), output: `${stdout}${stderr}` })
    )
  )
  ;[a, b] = await Promise.all([startRedis(), startRedis()])
  const { code, output } = await build
  expect(code, output).toBe(0)
}, 120_000)

afterAll(async () => {
  await killAllApps()
  await Promise.all([a?.stop(), b?.stop()])
})

const namedNodes = () => `node_a=${a.url},node_b=${b.url}`
const ringNode = (poll: string) => Ring.nodeFor(Ring.make(["node_a", "node_b"]), poll)
const rawFor = (node: string) => (node === "node_a" ? a : b).client()

describe.concurrent("node dist/main.js", () => {
  it("memory", async () => {
    const app = await built({ POLL_STAGE: "memory" })
    expect((await app.vote("smoke-memory", "A")).status).toBe(200)
    expect((await app.results("smoke-memory")).json).toEqual({
      poll_id: "smoke-memory",
      results: { A: 1 },
      served_via: "in_memory"
    })
    expect(await app.stop()).toBe(0)
  })

  it("redis", async () => {
    const app = await built({ POLL_STAGE: "redis", REDIS_URL: a.url })
    expect((await app.vote("smoke-redis", "A")).status).toBe(200)
    expect((await app.results("smoke-redis")).json).toEqual({
      poll_id: "smoke-redis",
      results: { A: 1 },
      served_via: "redis"
    })
    expect(await a.client().hgetall("poll:{smoke-redis}:counts")).toEqual({ A: "1" })
    expect(await app.stop()).toBe(0)
  })

  it("cached", async () => {
    const app = await built({ POLL_STAGE: "cached", REDIS_URL: a.url, CACHE_TTL_MS: "5000" })
    expect((await app.vote("smoke-cached", "A")).status).toBe(200)
    expect((await app.results("smoke-cached")).json).toEqual({
      poll_id: "smoke-cached",
      results: { A: 1 },
      served_via: "redis"
    })
    expect((await app.results("smoke-cached")).json).toEqual({
      poll_id: "smoke-cached",
      results: { A: 1 },
      served_via: "app_cache"
    })
    expect(await app.stop()).toBe(0)
  })

  it("batched", async () => {
    const app = await built({ POLL_STAGE: "batched", REDIS_URL: a.url, FLUSH_INTERVAL_MS: "600000" })
    expect((await app.vote("smoke-batched", "A")).status).toBe(200)
    expect((await app.results("smoke-batched")).json).toEqual({
      poll_id: "smoke-batched",
      results: { A: 1 },
      served_via: "redis"
    })
    expect(await a.client().exists("poll:{smoke-batched}:counts")).toBe(0)
    expect(await app.stop()).toBe(0)
    expect(await a.client().hgetall("poll:{smoke-batched}:counts")).toEqual({ A: "1" })
  })

  it("sharded", async () => {
    const app = await built({ POLL_STAGE: "sharded", REDIS_NODES: namedNodes() })
    const node = ringNode("smoke-sharded")
    expect((await app.vote("smoke-sharded", "A")).status).toBe(200)
    expect((await app.results("smoke-sharded")).json).toEqual({
      poll_id: "smoke-sharded",
      results: { A: 1 },
      served_via: node
    })
    expect(await rawFor(node).hgetall("poll:{smoke-sharded}:counts")).toEqual({ A: "1" })
    expect(await app.stop()).toBe(0)
  })

  it("full", async () => {
    const app = await built({
      POLL_STAGE: "full",
      REDIS_NODES: namedNodes(),
      CACHE_TTL_MS: "5000",
      FLUSH_INTERVAL_MS: "600000"
    })
    expect((await app.results("smoke-full-read")).json).toEqual({
      poll_id: "smoke-full-read",
      results: {},
      served_via: ringNode("smoke-full-read")
    })
    expect((await app.results("smoke-full-read")).json.served_via).toBe("app_cache")

    const node = ringNode("smoke-full")
    expect((await app.vote("smoke-full", "A")).status).toBe(200)
    const read = (await app.results("smoke-full")).json
    expect(read.results).toEqual({ A: 1 })
    expect(["app_cache", node]).toContain(read.served_via)
    expect(await app.stop()).toBe(0)
    expect(await rawFor(node).hgetall("poll:{smoke-full}:counts")).toEqual({ A: "1" })
  })
})

describe.concurrent("a bad configuration stops the app with exit code 1 and names the variable", () => {
  it.each([
    ["POLL_STAGE", { POLL_STAGE: "everything" }],
    ["CACHE_TTL_MS", { POLL_STAGE: "cached", CACHE_TTL_MS: "soon" }],
    ["REDIS_URL", { POLL_STAGE: "redis", REDIS_URL: "not a url" }],
    ["REDIS_NODES", { POLL_STAGE: "sharded", REDIS_NODES: "node_a=http://127.0.0.1:1" }],
    ["FLUSH_INTERVAL_MS", { POLL_STAGE: "batched", FLUSH_INTERVAL_MS: "0" }]
  ])("%s", async (variable, env) => {
    const { code, output } = await runToExit({ built: true, env })
    expect(code).toBe(1)
    expect(output).toContain(variable)
  })
})
