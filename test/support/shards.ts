import type { Redis } from "ioredis"
import { afterAll, beforeAll } from "vitest"
import { killAllApps } from "./app.js"
import { type RedisServer, startRedis } from "./redis.js"

/**
 * Three throwaway redis-servers for the tests that change the ring, named `node_a`, `node_b`, `node_c` as the
 * `REDIS_NODES` lists name them: started before the file's tests (a `beforeAll` of the file's own runs after this
 * one), stopped after them with every app the file started. `raw` holds a client of each, by name.
 */
export const threeShards = () => {
  const servers: Record<string, RedisServer> = {}
  const raw: Record<string, Redis> = {}
  beforeAll(async () => {
    const started = await Promise.all([startRedis(), startRedis(), startRedis()])
    for (const [i, name] of ["node_a", "node_b", "node_c"].entries()) {
      servers[name] = started[i]!
      raw[name] = started[i]!.client()
    }
  }, 30_000)
  afterAll(async () => {
    await killAllApps()
    await Promise.all(Object.values(servers).map((server) => server.stop()))
  })
  const twoNodes = () => `node_a=${servers.node_a!.url},node_b=${servers.node_b!.url}`
  return { servers, raw, twoNodes, threeNodes: () => `${twoNodes()},node_c=${servers.node_c!.url}` }
}
