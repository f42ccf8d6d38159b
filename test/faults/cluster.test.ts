import { spawn } from "node:child_process"
import { afterEach, describe, expect, it } from "vitest"
import { type App, startApp } from "../support/app.js"
import { type RedisCluster, startCluster } from "../support/cluster.js"
import { compare, runLoad, total } from "../support/load.js"
import { eventually, sleep } from "../support/wait.js"

/**
 * The cluster stage through the app, under load, on a real Redis Cluster: every 200 is counted, once, across a master
 * killed with `kill -9`, a slot range migrated while votes arrive, and a master without a replica that goes away.
 */

const FLUSH_MS = 200

let cluster: RedisCluster | undefined
let app: App | undefined

afterEach(async () => {
  await app?.kill()
  await cluster?.stop()
  app = undefined
  cluster = undefined
})

const start = async (c: RedisCluster, env: Record<string, string> = {}) =>
  startApp({
    readyTimeoutMs: 60_000,
    env: {
      POLL_STAGE: "cluster",
      REDIS_CLUSTER: c.seeds.join(","),
      FLUSH_INTERVAL_MS: String(FLUSH_MS),
      CACHE_TTL_MS: "200",
      ...env
    }
  })

/** What the cluster holds for these polls, as `poll/option` -> count. */
const stored = async (c: RedisCluster, polls: ReadonlyArray<string>) => {
  const client = c.client()
  try {
    const counts = new Map<string, number>()
    for (const poll of polls) {
      for (const [option, n] of Object.entries(await client.hgetall(`poll:{${poll}}:counts`))) {
        counts.set(`${poll}/${option}`, Number(n))
      }
    }
    return counts
  } finally {
    client.disconnect()
  }
}

/** Polls whose slots the given master serves, and polls on the others. */
const pollsBy = async (c: RedisCluster, candidates: ReadonlyArray<string>) => {
  const owners = await Promise.all(candidates.map(async (p) => [p, await c.masterOf(p)] as const))
  return (master: number) => owners.filter(([, m]) => m === master).map(([p]) => p)
}

const candidates = (prefix: string) => Array.from({ length: 60 }, (_, i) => `${prefix}-${i}`)

/** Votes until `until`; then the app's final flush, and the cluster compared with the 200s. */
const settle = async (c: RedisCluster, polls: ReadonlyArray<string>, report: Awaited<ReturnType<typeof runLoad>>) => {
  await eventually(
    async () => total(await stored(c, polls)),
    (n) => n >= report.acceptedTotal,
    30_000
  )
  // A flush more: a part applied twice would show now.
  await sleep(FLUSH_MS * 3)
  expect(await app!.stop()).toBe(0)
  return compare(report.accepted, await stored(c, polls))
}

describe("the cluster stage under load", () => {
  it("kill -9 of a master with a replica: its replica takes over and nothing is lost or doubled", async () => {
    cluster = await startCluster()
    app = await start(cluster, { REDIS_WAIT_REPLICAS: "1" })
    const masters = cluster.nodes.filter((n) => n.role === "master").map((n) => n.port)
    const on = await pollsBy(cluster, candidates("failover"))
    const victim = masters[0]!
    const polls = [...on(victim).slice(0, 4), ...on(masters[1]!).slice(0, 2), ...on(masters[2]!).slice(0, 2)]
    expect(on(victim).length).toBeGreaterThan(0)

    const load = runLoad(() => app!, { polls, options: ["A", "B"], clients: 8, until: sleep(9000) })
    await sleep(1500)
    await cluster.kill(victim)
    // The replica is promoted within a few seconds; until its old master is back as its replica, flushes to it wait
    // (a batch is confirmed only once a replica holds it), and the buffer keeps the votes.
    await sleep(4500)
    await cluster.start(victim)
    const report = await load
    expect(report.unanswered).toBe(0)
    expect(report.acceptedTotal).toBeGreaterThan(0)
    const { lost, doubled } = await settle(cluster, polls, report)
    console.log(
      `fault cluster master kill: accepted=${report.acceptedTotal} refused=${report.refused} lost=${lost} doubled=${doubled}`
    )
    expect({ lost, doubled }).toEqual({ lost: 0, doubled: 0 })
  }, 90_000)

  it("a slot range migrated with redis-cli --cluster reshard while votes arrive: nothing lost or doubled", async () => {
    cluster = await startCluster()
    app = await start(cluster, { REDIS_WAIT_REPLICAS: "1" })
    const topology = await cluster.topology()
    const masters = topology.filter((n) => n.role === "master")
    // The master serving slot 0 gives its first 1,000 slots to another: polls in those slots move mid-load.
    const source = masters.find((m) => m.slots.some(([from, to]) => from <= 0 && 0 <= to))!
    const target = masters.find((m) => m !== source)!
    const moving = (await Promise.all(candidates("reshard").map(async (p) => [p, await cluster!.slotOf(p)] as const)))
      .filter(([, slot]) => slot < 1000)
      .map(([p]) => p)
    const staying = (await pollsBy(cluster, candidates("stay")))(target.port).slice(0, 2)
    expect(moving.length).toBeGreaterThan(0)
    const polls = [...moving.slice(0, 6), ...staying]
    const ids = await Promise.all([source, target].map((m) => cluster!.node(m.port).call("CLUSTER", "MYID")))

    const load = runLoad(() => app!, { polls, options: ["A", "B"], clients: 8, until: sleep(8000) })
    await sleep(1000)
    const resharded = await new Promise<number | null>((resolve) => {
      const child = spawn(
        "redis-cli",
        [
          "--cluster",
          "reshard",
          `127.0.0.1:${source.port}`,
          "--cluster-from",
          String(ids[0]),
          "--cluster-to",
          String(ids[1]),
          "--cluster-slots",
          "1000",
          "--cluster-yes"
        ],
        { stdio: "ignore" }
      )
      child.once("exit", resolve)
    })
    expect(resharded).toBe(0)
    const report = await load
    // The polls did move.
    for (const p of moving.slice(0, 6)) expect(await cluster.masterOf(p)).toBe(target.port)
    expect(report.unanswered).toBe(0)
    const { lost, doubled } = await settle(cluster, polls, report)
    console.log(
      `fault cluster reshard: accepted=${report.acceptedTotal} refused=${report.refused} lost=${lost} doubled=${doubled}`
    )
    expect({ lost, doubled }).toEqual({ lost: 0, doubled: 0 })
  }, 90_000)

  it("a master without a replica down: its polls answer 503, the others serve, and nothing is lost when it returns", async () => {
    cluster = await startCluster({ replicas: 0, requireFullCoverage: false })
    app = await start(cluster)
    const masters = cluster.nodes.map((n) => n.port)
    const on = await pollsBy(cluster, candidates("alone"))
    const [down, up] = [masters[0]!, masters[1]!]
    const downPolls = on(down).slice(0, 3)
    const upPolls = on(up).slice(0, 3)
    const polls = [...downPolls, ...upPolls]

    const load = runLoad(() => app!, { polls, options: ["A", "B"], clients: 8, until: sleep(7000) })
    await sleep(1000)
    await cluster.kill(down)
    // While it is down, a poll of its slots is refused within 2 s (not counted); a poll elsewhere is counted.
    await sleep(1500)
    const refusedAt = Date.now()
    const refusedRead = await app.results(downPolls[0]!)
    expect(Date.now() - refusedAt).toBeLessThan(2000)
    expect(refusedRead.status).toBe(503)
    expect((await app.vote(upPolls[0]!, "A")).status).toBe(200)
    await sleep(1500)
    await cluster.start(down)
    await cluster.waitForState("ok")
    const report = await load
    const extra = new Map(report.accepted)
    extra.set(`${upPolls[0]}/A`, (extra.get(`${upPolls[0]}/A`) ?? 0) + 1)
    const { lost, doubled } = await settle(cluster, polls, {
      ...report,
      accepted: extra,
      acceptedTotal: report.acceptedTotal + 1
    })
    console.log(
      `fault cluster master down: accepted=${report.acceptedTotal} refused=${report.refused} lost=${lost} doubled=${doubled}`
    )
    expect({ lost, doubled }).toEqual({ lost: 0, doubled: 0 })
  }, 90_000)
})
