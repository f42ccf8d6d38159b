import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Ring from "../../src/Ring.js"
import { type App, startApp } from "../support/app.js"
import { runLoad } from "../support/load.js"
import { eventually, sleep } from "../support/wait.js"
import { type RedisServer, startRedis } from "../support/redis.js"

const FLUSH_MS = 300

let nodes: Array<RedisServer>
let app: App | undefined

beforeAll(async () => {
  nodes = await Promise.all([startRedis(), startRedis()])
})

afterAll(async () => {
  await app?.kill()
  await Promise.all(nodes.map((n) => n.stop()))
})

const name = (node: RedisServer) => `redis_${node.port}`

const storedOn = async (node: RedisServer, polls: ReadonlyArray<string>) => {
  const client = node.client()
  const counts = new Map<string, number>()
  for (const poll of polls) {
    for (const [option, n] of Object.entries(await client.hgetall(`poll:{${poll}}:counts`))) {
      counts.set(`${poll}/${option}`, Number(n))
    }
  }
  client.disconnect()
  return counts
}

const total = (counts: Map<string, number>) => [...counts.values()].reduce((a, b) => a + b, 0)

describe("full stage with one of two shards down", () => {
  it("the other shard keeps serving and flushing; the down shard's votes are applied once when it returns", async () => {
    const [up, down] = nodes as [RedisServer, RedisServer]
    app = await startApp({
      env: {
        POLL_STAGE: "full",
        REDIS_NODES: `${up.url},${down.url}`,
        FLUSH_INTERVAL_MS: String(FLUSH_MS),
        CACHE_TTL_MS: "200"
      }
    })
    const ring = Ring.make([name(up), name(down)])
    const candidates = Array.from({ length: 40 }, (_, i) => `shard-${i}`)
    const pollsOn = (node: RedisServer) => candidates.filter((p) => Ring.nodeFor(ring, p) === name(node)).slice(0, 6)
    const upPolls = pollsOn(up)
    const downPolls = pollsOn(down)
    expect(upPolls.length).toBeGreaterThan(0)
    expect(downPolls.length).toBeGreaterThan(0)

    const load = runLoad(() => app!, {
      polls: [...upPolls, ...downPolls],
      options: ["A", "B"],
      clients: 12,
      until: sleep(3500)
    })
    await sleep(500)
    await down.halt()
    const duringOutage = total(await storedOn(up, upPolls))
    await sleep(FLUSH_MS * 4)
    // Flushes to the healthy shard went on while the other was down.
    expect(total(await storedOn(up, upPolls))).toBeGreaterThan(duringOutage)
    // Reads of a poll on the healthy shard still answer.
    expect((await app.results(upPolls[0]!)).status).toBe(200)
    const health = await app.request("GET", "/api/v1/health")
    expect(health.status).toBe(503)
    expect(health.json.nodes).toContainEqual({ name: name(down), reachable: false })
    await down.start()
    const report = await load
    expect(report.unanswered).toBe(0)

    const expected = (polls: ReadonlyArray<string>) =>
      Object.fromEntries([...report.accepted].filter(([key]) => polls.includes(key.split("/")[0]!)))
    await eventually(
      async () => total(await storedOn(up, upPolls)) + total(await storedOn(down, downPolls)),
      (n) => n >= report.acceptedTotal
    )
    await sleep(FLUSH_MS * 3)
    expect(Object.fromEntries(await storedOn(up, upPolls))).toEqual(expected(upPolls))
    expect(Object.fromEntries(await storedOn(down, downPolls))).toEqual(expected(downPolls))
    // Each poll lives on its own shard only.
    expect(total(await storedOn(up, downPolls))).toBe(0)
    expect(total(await storedOn(down, upPolls))).toBe(0)
    console.log(`fault shard-down: accepted=${report.acceptedTotal} refused=${report.refused}`)
    expect(await app.stop()).toBe(0)
  })
})
