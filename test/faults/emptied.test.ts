import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Ring from "../../src/Ring.js"
import { type App, startApp } from "../support/app.js"
import { type RedisServer, startRedis } from "../support/redis.js"
import { sleep } from "../support/wait.js"

/**
 * A shard that loses its keys mid-load (FLUSHALL; a restore from an older snapshot looks the same). What it held is
 * gone, and nothing can bring it back, but nothing is made up either: no count grows past the votes answered 200, the
 * other shard's polls stay exact, and a defined poll on the emptied shard does not turn ad hoc: it refuses votes with
 * 503 definition_lost until its organiser defines it again.
 */

const FLUSH_MS = 200
const NODES = ["node_a", "node_b"]
const OPTIONS = ["A", "B"]

let a: RedisServer
let b: RedisServer
let app: App

/** Other files may be starting many apps at once; on a busy 2-core machine a start takes a while. */
const START_TIMEOUT_MS = 60_000

beforeAll(async () => {
  ;[a, b] = await Promise.all([startRedis(), startRedis()])
  app = await startApp({
    readyTimeoutMs: START_TIMEOUT_MS,
    env: {
      POLL_STAGE: "full",
      REDIS_NODES: `node_a=${a.url},node_b=${b.url}`,
      FLUSH_INTERVAL_MS: String(FLUSH_MS),
      CACHE_TTL_MS: "100"
    }
  })
}, START_TIMEOUT_MS + 30_000)

afterAll(async () => {
  await app?.kill()
  await Promise.all([a?.stop(), b?.stop()])
})

const ring = Ring.make(NODES)
const serverOf = (pollId: string) => (Ring.nodeFor(ring, pollId) === "node_a" ? a : b)

/** Poll ids of the given prefix, `n` of them on each node. */
const pollsOnEach = (prefix: string, n: number) => {
  const found: Record<string, Array<string>> = { node_a: [], node_b: [] }
  for (let i = 0; found.node_a!.length < n || found.node_b!.length < n; i++) {
    const id = `${prefix}-${i}`
    const list = found[Ring.nodeFor(ring, id)]!
    if (list.length < n) list.push(id)
  }
  return found as { node_a: Array<string>; node_b: Array<string> }
}

const stored = async (pollId: string) => {
  const client = serverOf(pollId).client()
  const hash = await client.hgetall(`poll:{${pollId}}:counts`)
  client.disconnect()
  return Object.fromEntries(OPTIONS.map((o) => [o, Number(hash[o] ?? 0)]))
}

describe("full stage, one shard emptied mid-load", () => {
  it("loses what that shard held and nothing else, doubles nothing, and keeps defined polls' rules", async () => {
    const adHoc = pollsOnEach("emptied-adhoc", 3)
    const defined = pollsOnEach("emptied-defined", 1)
    for (const id of [...defined.node_a, ...defined.node_b]) {
      const body = { id, question: "Which?", options: OPTIONS.map((o) => ({ id: o, label: o })) }
      expect((await app.request("POST", "/api/v1/polls", JSON.stringify(body))).status).toBe(201)
    }
    const polls = [...adHoc.node_a, ...adHoc.node_b]
    /** 200s per poll and option: all of them, and those whose request began after the shard was emptied. */
    const accepted = new Map<string, number>()
    const acceptedAfter = new Map<string, number>()
    const bump = (m: Map<string, number>, key: string) => m.set(key, (m.get(key) ?? 0) + 1)
    let emptiedAt = Infinity
    let done = false
    let sequence = 0
    const unexpected: Array<string> = []
    const client = async () => {
      while (!done) {
        const n = sequence++
        const poll = polls[n % polls.length]!
        const option = OPTIONS[n % OPTIONS.length]!
        const startedAt = Date.now()
        const reply = await app.vote(poll, option)
        if (reply.status === 200) {
          bump(accepted, `${poll}/${option}`)
          if (startedAt > emptiedAt) bump(acceptedAfter, `${poll}/${option}`)
        } else if (reply.status !== 503) unexpected.push(`${poll}: ${reply.status} ${reply.text}`)
      }
    }
    const load = Promise.all(Array.from({ length: 12 }, client))
    await sleep(1000)
    const admin = a.client()
    await admin.flushall()
    emptiedAt = Date.now()
    await sleep(1000)
    done = true
    await load
    expect(unexpected).toEqual([])

    // The emptied shard's defined poll: its rules are not silently gone.
    const lost = defined.node_a[0]!
    const refused = await app.request("POST", `/api/v1/vote/${lost}`, JSON.stringify({ option_id: "not-an-option" }))
    expect(refused.status).toBe(503)
    expect(refused.json.error).toBe("definition_lost")
    // The other shard's defined poll still keeps its rules.
    const kept = defined.node_b[0]!
    const unknown = await app.request("POST", `/api/v1/vote/${kept}`, JSON.stringify({ option_id: "not-an-option" }))
    expect(unknown.json.error).toBe("unknown_option")

    await sleep(FLUSH_MS * 4)
    let acceptedTotal = 0
    let storedTotal = 0
    for (const poll of polls) {
      const counts = await stored(poll)
      for (const option of OPTIONS) {
        const key = `${poll}/${option}`
        const n = counts[option]!
        acceptedTotal += accepted.get(key) ?? 0
        storedTotal += n
        if (adHoc.node_b.includes(poll)) expect(n, key).toBe(accepted.get(key) ?? 0)
        else {
          // Never more than was answered 200; at least every vote cast after the shard was emptied.
          expect(n, key).toBeLessThanOrEqual(accepted.get(key) ?? 0)
          expect(n, key).toBeGreaterThanOrEqual(acceptedAfter.get(key) ?? 0)
        }
      }
    }
    expect(acceptedTotal).toBeGreaterThan(200)
    console.log(
      `fault shard-emptied full: accepted=${acceptedTotal} stored=${storedTotal} lost=${acceptedTotal - storedTotal} (all on the emptied shard) doubled=0`
    )
    admin.disconnect()
  })
})
