import { readFileSync } from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Ring from "../src/Ring.js"
import { type App, killAllApps, startApp } from "./support/app.js"
import { type RedisServer, startRedis } from "./support/redis.js"
import { openStream, type Stream } from "./support/stream.js"
import { eventually, sleep } from "./support/wait.js"

/** Live results over Server-Sent Events: first event, updates, the rate cap, fan-out across processes, cleanup. */

const FLUSH_MS = 500
/** The contract bound for a vote on one instance to reach a stream held on another. */
const CROSS_INSTANCE_MS = FLUSH_MS + 1000

/** Every app starts at once; on a busy 2-core machine that takes a while. */
const START_TIMEOUT_MS = 90_000

let x: RedisServer
let y: RedisServer
/** `batched` over x, both flushing every FLUSH_MS. */
let batchedA: App
let batchedB: App
/** `full` over the shards node_a = x and node_b = y. */
let fullA: App
let fullB: App

beforeAll(async () => {
  ;[x, y] = await Promise.all([startRedis(), startRedis()])
  const batched = { POLL_STAGE: "batched", REDIS_URL: x.url, FLUSH_INTERVAL_MS: String(FLUSH_MS) }
  // CACHE_TTL_MS stays at its default: a stream must not wait for another instance's cache to expire.
  const full = {
    POLL_STAGE: "full",
    REDIS_NODES: `node_a=${x.url},node_b=${y.url}`,
    FLUSH_INTERVAL_MS: String(FLUSH_MS)
  }
  ;[batchedA, batchedB, fullA, fullB] = await Promise.all([
    startApp({ readyTimeoutMs: START_TIMEOUT_MS, env: batched }),
    startApp({ readyTimeoutMs: START_TIMEOUT_MS, env: batched }),
    startApp({ readyTimeoutMs: START_TIMEOUT_MS, env: full }),
    startApp({ readyTimeoutMs: START_TIMEOUT_MS, env: full })
  ])
}, START_TIMEOUT_MS + 30_000)

afterAll(async () => {
  await killAllApps()
  await Promise.all([x?.stop(), y?.stop()])
})

const streams: Array<Stream> = []
const track = async (stream: Promise<Stream>) => {
  const s = await stream
  streams.push(s)
  return s
}
afterAll(() => streams.forEach((s) => s.close()))

const json = (body: unknown) => JSON.stringify(body)
const create = (app: App, body: unknown) => app.request("POST", "/api/v1/polls", json(body))
/** Closes a poll as its organiser, with the key its creation answered. */
const close = (app: App, id: string, created: { json: any }) =>
  app.request("POST", `/api/v1/polls/${id}/close`, undefined, { authorization: `Bearer ${created.json.organiser_key}` })
const total = (results: Record<string, number>) => Object.values(results).reduce((s, n) => s + n, 0)

let unique = 0
const pollId = (name: string) => `${name}-${process.pid}-${unique++}`

/** Server-side TCP connections established on `port` (127.0.0.1), from the kernel's table. */
const connectionsOn = (port: number) => {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`
  return readFileSync("/proc/net/tcp", "utf8")
    .split("\n")
    .slice(1)
    .map((line) => line.trim().split(/\s+/))
    .filter((fields) => fields[1] === local && fields[3] === "01").length
}

describe("results stream", () => {
  it("sends the current results at once, as an event-stream", async () => {
    const id = pollId("first")
    for (const option of ["A", "A", "B"]) expect((await batchedA.vote(id, option)).status).toBe(200)
    const opened = Date.now()
    const stream = await track(openStream(batchedA.port, id))
    expect(stream.status).toBe(200)
    expect(stream.contentType).toMatch(/^text\/event-stream/)
    const first = await stream.waitFor(() => true, { timeoutMs: 1000, what: "the first event" })
    expect(first.at - opened).toBeLessThan(1000)
    expect(first.data).toEqual({ poll_id: id, results: { A: 2, B: 1 } })
  })

  it("sends an event when a vote changes the results", async () => {
    const id = pollId("vote")
    const stream = await track(openStream(batchedA.port, id))
    await stream.waitFor((d) => total(d.results) === 0, { what: "the empty first event" })
    const from = stream.events.length
    const voted = Date.now()
    expect((await batchedA.vote(id, "C")).status).toBe(200)
    const event = await stream.waitFor((d) => d.results.C === 1, { from, what: "the vote" })
    expect(event.at - voted).toBeLessThan(1000)
    expect(event.data).toEqual({ poll_id: id, results: { C: 1 } })
  })

  it("a defined poll's events carry the question and every option, and show it closing", async () => {
    const id = pollId("closing")
    const created = await create(batchedA, {
      id,
      question: "Lunch?",
      options: [
        { id: "soup", label: "Soup" },
        { id: "salad", label: "Salad" }
      ]
    })
    expect(created.status).toBe(201)
    const stream = await track(openStream(batchedA.port, id))
    const first = await stream.waitFor(() => true, { what: "the first event" })
    expect(first.data).toEqual({
      poll_id: id,
      results: { soup: 0, salad: 0 },
      question: "Lunch?",
      options: [
        { id: "soup", label: "Soup", votes: 0 },
        { id: "salad", label: "Salad", votes: 0 }
      ],
      one_vote_per_voter: false,
      closes_at: null,
      closed: false
    })
    expect((await batchedA.vote(id, "salad")).status).toBe(200)
    await stream.waitFor((d) => d.results.salad === 1, { what: "the vote" })
    const from = stream.events.length
    expect((await close(batchedA, id, created)).status).toBe(200)
    const closed = await stream.waitFor((d) => d.closed === true, { from, what: "closed: true" })
    expect(closed.data.results).toEqual({ soup: 0, salad: 1 })
  })

  it("a poll closed through one instance shows closed on a stream held on another", async () => {
    const id = pollId("closing-elsewhere")
    const created = await create(batchedA, {
      id,
      question: "Go?",
      options: [
        { id: "yes", label: "Yes" },
        { id: "no", label: "No" }
      ]
    })
    expect(created.status).toBe(201)
    const stream = await track(openStream(batchedB.port, id))
    await stream.waitFor((d) => d.closed === false, { what: "the open poll" })
    const from = stream.events.length
    expect((await close(batchedA, id, created)).status).toBe(200)
    await stream.waitFor((d) => d.closed === true, { from, timeoutMs: CROSS_INSTANCE_MS, what: "closed: true" })
  })

  it("sends at most about 10 events per second during a burst of 300 votes, and ends on the exact count", async () => {
    const id = pollId("burst")
    const stream = await track(openStream(batchedA.port, id))
    await stream.waitFor(() => true, { what: "the first event" })
    const from = stream.events.length
    // 30 waves of 10 concurrent votes, 40 ms apart: every wave changes the results, for over a second.
    const start = Date.now()
    for (let wave = 0; wave < 30; wave++) {
      const replies = await Promise.all(Array.from({ length: 10 }, (_, i) => batchedA.vote(id, `o${i % 3}`)))
      expect(replies.map((r) => r.status)).toEqual(Array(10).fill(200))
      await sleep(40)
    }
    const last = await stream.waitFor((d) => total(d.results) === 300, { from, what: "all 300 votes" })
    expect(last.data.results).toEqual({ o0: 120, o1: 90, o2: 90 })

    const during = stream.events.slice(from).filter((e) => e.at >= start)
    const inWindow = during.filter((e) => e.at < start + 1000).length
    // The cap is one event per 100 ms per poll: 10 per second, 11 counting both ends of a window; one more of margin.
    expect(inWindow).toBeLessThanOrEqual(12)
    expect(inWindow).toBeGreaterThanOrEqual(2)
    const busiest = Math.max(...during.map((e) => during.filter((o) => o.at >= e.at && o.at < e.at + 1000).length))
    expect(busiest).toBeLessThanOrEqual(12)
    // Each event says something new.
    const totals = stream.events.slice(from).map((e) => total(e.data.results))
    expect(new Set(totals).size).toBe(totals.length)
  })

  it("a vote through one batched instance reaches a stream held on another within a flush interval plus 1 s", async () => {
    const id = pollId("fanout")
    const stream = await track(openStream(batchedB.port, id))
    await stream.waitFor(() => true, { what: "the first event" })
    for (const [n, option] of ["A", "B"].entries()) {
      const from = stream.events.length
      const voted = Date.now()
      expect((await batchedA.vote(id, option)).status).toBe(200)
      const event = await stream.waitFor((d) => total(d.results) === n + 1, {
        from,
        timeoutMs: CROSS_INSTANCE_MS + 1000,
        what: `vote ${n + 1} from the other instance`
      })
      expect(event.at - voted).toBeLessThanOrEqual(CROSS_INSTANCE_MS)
    }
    expect(stream.events.at(-1)!.data.results).toEqual({ A: 1, B: 1 })
  })

  it("a vote through one full-stage instance reaches a stream on another, for polls on either shard", async () => {
    const ring = Ring.make(["node_a", "node_b"])
    const onShard = (node: string) => {
      for (let i = 0; ; i++) {
        const id = pollId(`full-${node}-${i}`)
        if (Ring.nodeFor(ring, id) === node) return id
      }
    }
    const polls = [onShard("node_a"), onShard("node_b")]
    const opened = await Promise.all(polls.map((id) => track(openStream(fullB.port, id))))
    await Promise.all(opened.map((s) => s.waitFor(() => true, { what: "the first event" })))
    // The streams' first reads left a snapshot in fullB's cache; a vote through fullA must still reach them.
    for (const [i, id] of polls.entries()) {
      const stream = opened[i]!
      const from = stream.events.length
      const voted = Date.now()
      expect((await fullA.vote(id, "A")).status).toBe(200)
      const event = await stream.waitFor((d) => d.results.A === 1, {
        from,
        timeoutMs: CROSS_INSTANCE_MS + 1000,
        what: `the vote on ${id} from the other instance`
      })
      expect(event.at - voted).toBeLessThanOrEqual(CROSS_INSTANCE_MS)
    }
    for (const [i, id] of polls.entries()) {
      const node = i === 0 ? x : y
      await eventually(async () => ((await node.client().hget(`poll:{${id}}:counts`, "A")) === "1" ? true : undefined))
    }
  })

  it("streams closed by their clients are freed, and the instance keeps serving", async () => {
    const id = pollId("many")
    const baseline = connectionsOn(batchedA.port)
    const many = await Promise.all(Array.from({ length: 200 }, () => openStream(batchedA.port, id)))
    await Promise.all(many.map((s) => s.waitFor(() => true, { what: "the first event" })))
    expect(connectionsOn(batchedA.port)).toBeGreaterThanOrEqual(baseline + 200)

    many.forEach((s) => s.close())
    await eventually(async () => (connectionsOn(batchedA.port) <= baseline + 2 ? true : undefined), {
      timeoutMs: 3000,
      what: "the server to close the aborted streams"
    })

    // A vote signals the poll whose streams are all gone; a new stream works as before.
    expect((await batchedA.vote(id, "A")).status).toBe(200)
    const fresh = await track(openStream(batchedA.port, id))
    expect((await fresh.waitFor(() => true, { what: "the first event" })).data.results).toEqual({ A: 1 })
    const from = fresh.events.length
    expect((await batchedA.vote(id, "A")).status).toBe(200)
    await fresh.waitFor((d) => d.results.A === 2, { from, what: "the next vote" })
    expect((await batchedA.request("GET", "/")).status).toBe(200)
  })
})
