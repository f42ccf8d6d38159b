import { mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Ring from "../../src/Ring.js"
import { type App, killAllApps, type Reply, startApp } from "../support/app.js"
import {
  type Backend,
  type Balancer,
  type CutOff,
  type Front,
  fromBalancer,
  outcomeOf,
  reconcile,
  runBalancedLoad,
  startBalancer,
  startNginx
} from "../support/balancer.js"
import { storedCounts, total } from "../support/load.js"
import { freePort, type RedisServer, startRedis } from "../support/redis.js"
import { openStream } from "../support/stream.js"
import { eventually, sleep } from "../support/wait.js"

/**
 * Three instances of the `full` stage over two shards, behind HAProxy: votes through one address while instances
 * stop (SIGTERM) and crash (SIGKILL, with a journal), one vote per voter across instances, and live streams fed by
 * votes cast on the other instances, held on an instance or through the compose file's nginx. And what HAProxy and
 * that nginx do with a vote an instance took and never answered.
 */

const FLUSH_MS = 200
/** The flush interval of the instances stopped and killed, until then: long enough that each holds votes when it goes. */
const SLOW_FLUSH_MS = 2000
/** The contract bound for a vote on one instance to reach a stream held on another: its flush interval plus this. */
const CROSS_INSTANCE_MS = 1000
/** How long a stream may take to show a vote cast on `sender`. */
const boundFor = (sender: ReadonlyArray<Instance>) => Math.max(...sender.map((i) => i.flushMs)) + CROSS_INSTANCE_MS
const OPTIONS = ["A", "B", "C"]
const SHARDS = ["shard_a", "shard_b"] as const

let shards: Array<RedisServer>
let balancer: Balancer

interface Instance {
  readonly name: string
  readonly port: number
  readonly journal: string
  app: App
  flushMs: number
}
const instances: Array<Instance> = []

const start = (instance: Pick<Instance, "port" | "journal">, flushMs: number) =>
  startApp({
    port: instance.port,
    readyTimeoutMs: 60_000,
    env: {
      POLL_STAGE: "full",
      REDIS_NODES: SHARDS.map((name, i) => `${name}=${shards[i]!.url}`).join(","),
      FLUSH_INTERVAL_MS: String(flushMs),
      JOURNAL_DIR: instance.journal
    }
  })

beforeAll(async () => {
  shards = await Promise.all(SHARDS.map(() => startRedis()))
  const planned = await Promise.all(
    ["app0", "app1", "app2"].map(async (name) => ({
      name,
      port: await freePort(),
      journal: mkdtempSync(join(tmpdir(), `livepoll-journal-${name}-`))
    }))
  )
  // app0 and app1 are the ones stopped and killed, each holding what it took since its last flush.
  const flushes = [SLOW_FLUSH_MS, SLOW_FLUSH_MS, FLUSH_MS]
  const apps = await Promise.all(planned.map((p, i) => start(p, flushes[i]!)))
  planned.forEach((p, i) => instances.push({ ...p, app: apps[i]!, flushMs: flushes[i]! }))
  balancer = await startBalancer(instances)
}, 90_000)

afterAll(async () => {
  await balancer?.stop()
  await killAllApps()
  await Promise.all((shards ?? []).map((s) => s.stop()))
  for (const instance of instances) rmSync(instance.journal, { recursive: true, force: true })
})

const ring = Ring.make(SHARDS)
/** `count` poll ids named after `name`, half on each shard. */
const pollsFor = (name: string, count: number) => {
  const polls: Array<string> = []
  for (const shard of SHARDS) {
    for (let i = 0; polls.filter((p) => Ring.nodeFor(ring, p) === shard).length < count / 2; i++) {
      if (Ring.nodeFor(ring, `${name}-${i}`) === shard) polls.push(`${name}-${i}`)
    }
  }
  return polls
}

/** What both shards hold for these polls, as `poll/option` -> count. */
const stored = async (polls: ReadonlyArray<string>) => {
  const counts = new Map<string, number>()
  for (const shard of shards) for (const [key, n] of await storedCounts(shard, polls)) counts.set(key, n)
  return counts
}

const health = async (app: App) => (await app.request("GET", "/api/v1/health")).json

/** Starts `instance` again on its port and journal. */
const restart = async (instance: Instance, flushMs: number) => {
  instance.app = await start(instance, flushMs)
  instance.flushMs = flushMs
}

/** Until `app` holds votes not yet flushed, and how many. */
const holding = async (app: App) =>
  (
    await eventually(
      () => health(app),
      (h) => h.pending_votes > 0
    )
  ).pending_votes as number

/** The number in the restarted instance's `journal replayed: N accepted votes …` line. */
const replayed = async (app: App) =>
  Number(/journal replayed: (\d+)/.exec(await app.waitForLine(/journal replayed/))![1])

describe("three full-stage instances behind a load balancer", () => {
  it("SIGTERM of one and SIGKILL of another mid-load: every 200 is counted once, no vote is answered other than 200, 503 or the balancer's 502, and only the kill's cut-off votes may count", async () => {
    const polls = pollsFor("balanced", 8)
    const [stopped, killed] = instances as [Instance, Instance, Instance]
    const fault = (async () => {
      await sleep(1200)
      const pendingAtStop = await holding(stopped.app)
      const stoppedAt = Date.now()
      const stopCode = await stopped.app.stop("SIGTERM")
      const stopOutput = stopped.app.output()
      await balancer.waitFor(stopped.name, "DOWN")
      const servedBeforeRestart = (await balancer.servers()).find((s) => s.name === stopped.name)!.answered2xx
      // Its restart overlaps the kill, so for a while one instance serves alone.
      const restarted = restart(stopped, FLUSH_MS)
      restarted.catch(() => {})
      await sleep(300)

      const pendingAtKill = await holding(killed.app)
      const killedAt = Date.now()
      await killed.app.kill()
      await balancer.waitFor(killed.name, "DOWN")
      await restart(killed, FLUSH_MS)
      await restarted
      const replayedVotes = await replayed(killed.app)
      await Promise.all([balancer.waitFor(killed.name, "UP"), balancer.waitFor(stopped.name, "UP")])
      await sleep(800)
      return {
        pendingAtStop,
        stoppedAt,
        stopCode,
        stopOutput,
        servedBeforeRestart,
        pendingAtKill,
        killedAt,
        replayedVotes
      }
    })()
    // The load ends when the fault script does, however it ends; a failure in it fails the test after.
    const load = await runBalancedLoad(balancer, {
      polls,
      options: OPTIONS,
      clients: 8,
      pauseMs: 5,
      until: fault.catch(() => {})
    })
    const f = await fault
    const servers = await balancer.servers()

    expect(load.wrong).toEqual([])
    expect(load.acceptedTotal).toBeGreaterThan(500)
    // A down instance is invisible but for the votes it was holding when it went: a connection it refused was made
    // again to another instance, so the balancer never ran out of instances to try.
    expect(load.unreached).toBe(0)
    expect(load.cutOffs.filter((c) => c.at < f.stoppedAt)).toEqual([])
    // Stopped: it had votes buffered, drained its requests, flushed them all and exited 0.
    expect(f.pendingAtStop).toBeGreaterThan(0)
    expect(f.stopCode).toBe(0)
    expect(f.stopOutput).toMatch(/shutdown flush complete: nothing left buffered/)
    // Its restart found a journal with nothing left in it.
    expect(stopped.app.output()).not.toMatch(/journal replayed/)
    // Killed: what it had buffered came back through its journal.
    expect(f.pendingAtKill).toBeGreaterThan(0)
    expect(f.replayedVotes).toBeGreaterThan(0)
    // Every instance served votes, the restarted ones again after their restart.
    for (const server of servers) expect(server.answered2xx).toBeGreaterThan(0)
    expect(servers.find((s) => s.name === stopped.name)!.answered2xx).toBeGreaterThan(f.servedBeforeRestart)
    expect(servers.every((s) => s.status === "UP")).toBe(true)

    await eventually(
      () => stored(polls),
      (s) => total(s) >= load.acceptedTotal
    )
    // A few more flush intervals: a batch applied twice, or a journal replayed twice, would show up now.
    await sleep(FLUSH_MS * 4)
    const inRedis = await stored(polls)
    // A request the stopping instance cut off (one that reached it as its listener closed, before it was read) was
    // never counted; one the kill cut off may have been (journaled, and killed before its 200 went out).
    const { lost, doubled, cutOffCounted } = reconcile(load, inRedis, (c) => c.at >= f.killedAt)
    const byStop = load.cutOffs.filter((c) => c.at < f.killedAt)
    const byKill = load.cutOffs.filter((c) => c.at >= f.killedAt)
    const described = (cs: ReadonlyArray<CutOff>) =>
      `${cs.length} (${cs.filter((c) => c.outcome === "cut-off").length} answered 502)`
    console.log(
      `fault balanced sigterm+sigkill: accepted=${load.acceptedTotal} stored=${total(inRedis)} lost=${lost} ` +
        `doubled=${doubled} unreached=${load.unreached} refused=${load.refused} cut off by the stop=${described(byStop)} ` +
        `by the kill=${described(byKill)}, counted ${cutOffCounted} ` +
        `buffered at stop=${f.pendingAtStop} at kill=${f.pendingAtKill} replayed=${f.replayedVotes} ` +
        `split=${servers.map((s) => `${s.name}:${s.answered2xx}`).join(",")}`
    )
    expect(lost).toBe(0)
    expect(doubled).toBe(0)
  }, 60_000)

  it("one vote per voter holds across instances: of a voter's votes sent at once to each instance and through the balancer, exactly one is counted", async () => {
    const id = `balanced-voters-${process.pid}`
    const created = await balancer.request(
      "POST",
      "/api/v1/polls",
      JSON.stringify({
        id,
        question: "Which?",
        options: OPTIONS.map((o) => ({ id: o, label: o })),
        one_vote_per_voter: true
      })
    )
    expect(created.status).toBe(201)
    const voters = Array.from({ length: 40 }, (_, i) => `voter-${i}`)
    const targets = [
      ...instances.map((instance) => (body: string) => instance.app.request("POST", `/api/v1/vote/${id}`, body)),
      (body: string) => balancer.request("POST", `/api/v1/vote/${id}`, body)
    ]
    const counted = new Map<string, number>()
    const outcomes = await Promise.all(
      voters.map(async (voter, v) => {
        const replies = await Promise.all(
          targets.map((send, t) =>
            send(JSON.stringify({ option_id: OPTIONS[(v + t) % OPTIONS.length], voter_id: voter }))
          )
        )
        const accepted = replies.filter((r) => r.status === 200)
        for (const reply of accepted) counted.set(reply.json.option_id, (counted.get(reply.json.option_id) ?? 0) + 1)
        return { voter, accepted: accepted.length, others: replies.filter((r) => r.status !== 200).map(summary) }
      })
    )
    for (const outcome of outcomes) {
      expect(outcome.accepted, outcome.voter).toBe(1)
      expect(outcome.others, outcome.voter).toEqual(Array(targets.length - 1).fill("409 already_voted"))
    }
    const expected = Object.fromEntries(OPTIONS.map((o) => [o, counted.get(o) ?? 0]).filter(([, n]) => n !== 0))
    // Every instance, and the balancer, reads the same counts once the votes are flushed; Redis holds them.
    await eventually(
      async () => total(await stored([id])),
      (n) => n >= voters.length
    )
    for (const read of [...instances.map((i) => i.app), balancer]) {
      const results = await read.request("GET", `/api/v1/results/${id}`)
      expect(results.json.results).toEqual(expected)
    }
    expect(Object.fromEntries(await stored([id]))).toEqual(
      Object.fromEntries(Object.entries(expected).map(([o, n]) => [`${id}/${o}`, n]))
    )
  })

  it("a stream held on one instance sees the votes cast on the others and through the balancer, within their flush interval plus 1 s, and so does one through the compose file's nginx", async () => {
    const [holder, ...others] = instances as [Instance, Instance, Instance]
    const nginx = await startNginx(instances)
    const polls = pollsFor(`balanced-stream-${process.pid}`, 2)
    const held = await Promise.all(polls.map((id) => openStream(holder.app.port, id)))
    const proxied = await Promise.all(polls.map((id) => openStream(nginx.port, id)))
    try {
      await Promise.all(
        [...held, ...proxied].map((s) => s.waitFor(() => true, { what: "the first event", timeoutMs: 2000 }))
      )
      const senders: ReadonlyArray<Sender> = [
        ...others.map((o) => ({ via: o.name, send: (id: string) => o.app.vote(id, "A"), landsOn: [o] })),
        {
          via: "HAProxy",
          send: (id) => balancer.request("POST", `/api/v1/vote/${id}`, JSON.stringify({ option_id: "A" })),
          landsOn: instances
        }
      ]
      for (const [p, id] of polls.entries()) {
        for (const [n, { via, send, landsOn }] of senders.entries()) {
          const bound = boundFor(landsOn)
          const voted = Date.now()
          expect((await send(id)).status).toBe(200)
          for (const [on, stream] of [
            [holder.name, held[p]!],
            ["nginx", proxied[p]!]
          ] as const) {
            const what = `vote ${n + 1} on ${id} via ${via}, on the stream through ${on}`
            const event = await stream.waitFor((d) => d.results.A === n + 1, { what, timeoutMs: bound + 1000 })
            expect(event.at - voted, what).toBeLessThanOrEqual(bound)
          }
        }
      }
    } finally {
      ;[...held, ...proxied].forEach((s) => s.close())
      await nginx.stop()
    }
  })

  const fronts: ReadonlyArray<{
    readonly name: string
    /** In front of the cutter and `survivor`; nginx also of a port nothing listens on. */
    readonly start: (cutter: Backend, survivor: Backend) => Promise<Front>
    readonly refusedConnection?: RegExp
  }> = [
    { name: "HAProxy", start: (cutter, survivor) => startBalancer([cutter, survivor]) },
    {
      name: "nginx with the compose file's deploy/nginx.conf",
      start: async (cutter, survivor) => startNginx([cutter, { name: "dead", port: await freePort() }, survivor]),
      refusedConnection: /connect\(\) failed \(111: Connection refused\)/
    }
  ]
  for (const front of fronts) {
    it(`${front.name}: a vote an instance took and never answered is not sent to another (the client gets the balancer's 502, or on a reused connection none), so it is not counted twice`, async () => {
      const cutter = await startCutter()
      const survivor = instances[2]!
      const proxy = await front.start({ name: "cutter", port: cutter.port }, survivor)
      try {
        const id = `balanced-cut-${front.name.split(" ")[0]}-${process.pid}`
        const outcomes: Array<string> = []
        for (let i = 0; i < 12; i++) {
          const reply = await proxy
            .request("POST", `/api/v1/vote/${id}`, JSON.stringify({ option_id: "A" }))
            .catch(() => undefined)
          outcomes.push(reply === undefined ? "unanswered" : outcomeOf(reply))
        }
        const accepted = outcomes.filter((o) => o === "accepted").length
        const lostAnswers = outcomes.filter((o) => o === "cut-off" || o === "unanswered").length
        expect(outcomes.filter((o) => !["accepted", "cut-off", "unanswered"].includes(o))).toEqual([])
        expect(outcomes).toContain("cut-off")
        // Each vote the cutter took reached it once and went nowhere else.
        expect(cutter.posts()).toBe(lostAnswers)
        expect(accepted).toBe(outcomes.length - lostAnswers)
        // A connection refused was passed on: its vote was answered by another instance.
        if (front.refusedConnection !== undefined) expect(proxy.output()).toMatch(front.refusedConnection)
        await eventually(
          async () => total(await stored([id])),
          (n) => n >= accepted
        )
        await sleep(FLUSH_MS * 2)
        expect(Object.fromEntries(await stored([id]))).toEqual({ [`${id}/A`]: accepted })
      } finally {
        await proxy.stop()
        await cutter.close()
      }
    })
  }
})

/**
 * An instance that passes health checks and reads every vote to its end, then closes the connection without an
 * answer: what the balancer sees of an instance that counted a vote and died before it could say so.
 */
const startCutter = async () => {
  let posts = 0
  const server = createServer((req, res) => {
    if (req.method === "GET")
      return res.writeHead(200, { "content-type": "application/json" }).end('{"status":"healthy"}')
    req.resume()
    req.on("end", () => {
      posts++
      req.socket.destroy()
    })
  })
  const port = await freePort()
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve))
  return {
    port,
    posts: () => posts,
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

/** A way to cast a vote, and the instances it may land on: their flush intervals bound how soon a stream shows it. */
interface Sender {
  readonly via: string
  readonly send: (pollId: string) => Promise<Reply>
  readonly landsOn: ReadonlyArray<Instance>
}

const summary = (reply: Reply) =>
  `${reply.status} ${reply.json?.error ?? reply.text}${fromBalancer(reply) ? " (balancer)" : ""}`
