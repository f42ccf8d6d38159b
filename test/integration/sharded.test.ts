import type { Redis } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Ring from "../../src/Ring.js"
import { type App, killAllApps, startApp } from "../support/app.js"
import { eventually } from "../support/wait.js"
import { type RedisServer, startRedis } from "../support/redis.js"

const POLLS = Array.from({ length: 50 }, (_, i) => `s-${i}`)
/** Poll i gets one vote for A, and one for B when i is odd. */
const expectedCounts = (i: number) => (i % 2 === 1 ? { A: 1, B: 1 } : { A: 1 })

let a: RedisServer
let b: RedisServer
let rawA: Redis
let rawB: Redis
let named: App
let unnamed: App
/** poll -> node, as the sharded stage with named nodes served it. */
let shardedMapping: Record<string, string> = {}

const namedNodes = () => `node_a=${a.url},node_b=${b.url}`
const rawByName = (): Record<string, Redis> => ({
  node_a: rawA,
  node_b: rawB,
  [`redis_${a.port}`]: rawA,
  [`redis_${b.port}`]: rawB
})

const voteAll = async (app: App, polls: ReadonlyArray<string>) => {
  for (const [i, poll] of polls.entries()) {
    for (const option of Object.keys(expectedCounts(i))) expect((await app.vote(poll, option)).status).toBe(200)
  }
}

/** Reads every poll, checks its counts, and returns which node served it. */
const mappingOf = async (app: App, polls: ReadonlyArray<string>) => {
  const mapping: Record<string, string> = {}
  for (const [i, poll] of polls.entries()) {
    const reply = await app.results(poll)
    expect(reply.status).toBe(200)
    expect(reply.json.results).toEqual(expectedCounts(i))
    mapping[poll] = reply.json.served_via
  }
  return mapping
}

/** Each poll's hash is on the node the mapping names and on no other node. */
const expectKeysPlaced = async (mapping: Record<string, string>, names: ReadonlyArray<string>) => {
  const raw = rawByName()
  for (const [poll, node] of Object.entries(mapping)) {
    expect(names).toContain(node)
    for (const name of names) {
      expect({ poll, node: name, exists: await raw[name]!.exists(`poll:{${poll}}:counts`) }).toEqual({
        poll,
        node: name,
        exists: name === node ? 1 : 0
      })
    }
  }
  for (const name of names) expect(Object.values(mapping).filter((n) => n === name).length).toBeGreaterThan(0)
}

const ringMapping = (names: ReadonlyArray<string>, polls: ReadonlyArray<string>) => {
  const ring = Ring.make(names)
  return Object.fromEntries(polls.map((poll) => [poll, Ring.nodeFor(ring, poll)]))
}

beforeAll(async () => {
  ;[a, b] = await Promise.all([startRedis(), startRedis()])
  rawA = a.client()
  rawB = b.client()
  ;[named, unnamed] = await Promise.all([
    startApp({ env: { POLL_STAGE: "sharded", REDIS_NODES: namedNodes() } }),
    startApp({ env: { POLL_STAGE: "sharded", REDIS_NODES: `${a.url},${b.url}` } })
  ])
})

afterAll(async () => {
  await killAllApps()
  await Promise.all([a?.stop(), b?.stop()])
})

describe("sharded stage", () => {
  it("puts each poll on the one node the ring names, the same across restarts and REDIS_NODES order", async () => {
    await voteAll(named, POLLS)
    shardedMapping = await mappingOf(named, POLLS)
    expect(shardedMapping).toEqual(ringMapping(["node_a", "node_b"], POLLS))
    await expectKeysPlaced(shardedMapping, ["node_a", "node_b"])
    expect(await named.stop()).toBe(0)

    const [restarted, reordered] = await Promise.all([
      startApp({ env: { POLL_STAGE: "sharded", REDIS_NODES: namedNodes() } }),
      startApp({ env: { POLL_STAGE: "sharded", REDIS_NODES: `node_b=${b.url},node_a=${a.url}` } })
    ])
    expect(await mappingOf(restarted, POLLS)).toEqual(shardedMapping)
    expect(await mappingOf(reordered, POLLS)).toEqual(shardedMapping)
    expect(await restarted.stop()).toBe(0)
    expect(await reordered.stop()).toBe(0)
  })

  it("names unnamed nodes redis_<port>", async () => {
    const polls = POLLS.map((p) => `u${p}`)
    const names = [`redis_${a.port}`, `redis_${b.port}`]
    await voteAll(unnamed, polls)
    const mapping = await mappingOf(unnamed, polls)
    expect(mapping).toEqual(ringMapping(names, polls))
    await expectKeysPlaced(mapping, names)
    expect(await unnamed.stop()).toBe(0)
  })
})

describe("full stage", () => {
  it("buffers, flushes each poll to its ring node, and serves app_cache on a hit and the node on a miss", async () => {
    await Promise.all([rawA.flushall(), rawB.flushall()])
    const full = await startApp({
      env: { POLL_STAGE: "full", REDIS_NODES: namedNodes(), FLUSH_INTERVAL_MS: "300", CACHE_TTL_MS: "5000" }
    })

    expect((await full.vote("f-pending", "A")).status).toBe(200)
    expect((await full.results("f-pending")).json.results).toEqual({ A: 1 })

    await voteAll(full, POLLS)
    await eventually(
      async () => {
        const health = await full.request("GET", "/api/v1/health")
        return health.json.pending_votes === 0 ? true : undefined
      },
      { timeoutMs: 5000, what: "an empty write buffer" }
    )
    expect((await full.request("GET", "/api/v1/health")).json.nodes).toEqual([
      { name: "node_a", reachable: true },
      { name: "node_b", reachable: true }
    ])

    const misses = await mappingOf(full, POLLS)
    expect(misses).toEqual(shardedMapping)
    await expectKeysPlaced(misses, ["node_a", "node_b"])
    const hits = await mappingOf(full, POLLS)
    expect(new Set(Object.values(hits))).toEqual(new Set(["app_cache"]))
    expect(await full.stop()).toBe(0)
  })
})
