import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type App, startApp } from "../support/app.js"
import { compare, runLoad, storedCounts, total } from "../support/load.js"
import { eventually, sleep } from "../support/wait.js"
import { type RedisServer, startRedis } from "../support/redis.js"

const FLUSH_MS = 400
const OPTIONS = ["A", "B", "C"]

let redis: RedisServer
let app: App | undefined

beforeAll(async () => {
  redis = await startRedis()
})

afterAll(async () => {
  await app?.kill()
  await redis?.stop()
})

/** What Redis holds for these polls, as `poll/option` -> count. */
const stored = (polls: ReadonlyArray<string>) => storedCounts(redis, polls)

const pollsFor = (name: string) => Array.from({ length: 8 }, (_, i) => `${name}-${i}`)

describe("batched stage with Redis at maxmemory (noeviction)", () => {
  it("health is 503 degraded with the failing age while votes buffer; once raised, Redis holds exactly the 200s", async () => {
    const current = await startApp({
      env: { POLL_STAGE: "batched", REDIS_URL: redis.url, FLUSH_INTERVAL_MS: String(FLUSH_MS) }
    })
    app = current
    const health = () => current.request("GET", "/api/v1/health")
    const admin = redis.client()
    const polls = pollsFor("oom")
    let degraded: Awaited<ReturnType<typeof health>> | undefined
    let bufferedWhileFull = 0
    const storedWhileFull = { before: 0, after: -1 }
    const fault = (async () => {
      await sleep(600)
      // Every write is refused with OOM from here on; reads and PING still work, so the node stays reachable.
      await admin.config("SET", "maxmemory-policy", "noeviction")
      await admin.config("SET", "maxmemory", "1")
      storedWhileFull.before = total(await stored(polls))
      degraded = await eventually(
        () => health(),
        (h) => h.status === 503 && h.json?.flushes?.[0]?.failing === true,
        10_000
      )
      await sleep(FLUSH_MS * 2)
      bufferedWhileFull = (await health()).json.pending_votes
      storedWhileFull.after = total(await stored(polls))
      await admin.config("SET", "maxmemory", "0")
      await eventually(
        () => health(),
        (h) => h.status === 200,
        10_000
      )
      await sleep(500)
    })()
    // The load ends when the fault script does, however it ends; a failure in it fails the test after.
    const accepted = await runLoad(() => current, {
      polls,
      options: OPTIONS,
      clients: 16,
      until: fault.catch(() => {})
    })
    await fault
    admin.disconnect()

    expect(degraded?.json).toMatchObject({
      status: "degraded",
      nodes: [{ name: "redis", reachable: true }],
      flushes: [{ node: "redis", failing: true, last_error: expect.stringContaining("OOM") }]
    })
    const flush = degraded!.json.flushes[0]
    expect(flush.failing_since_ms_ago).toBeGreaterThanOrEqual(FLUSH_MS)
    expect(flush.pending_votes).toBeGreaterThan(0)
    expect(degraded!.json.pending_votes).toBe(flush.pending_votes)
    // Nothing reached Redis while it refused writes, and the buffer kept taking votes.
    expect(storedWhileFull.after).toBe(storedWhileFull.before)
    expect(bufferedWhileFull).toBeGreaterThan(flush.pending_votes)
    expect(accepted.refused).toBe(0)
    expect(accepted.unanswered).toBe(0)

    const final = await eventually(
      () => stored(polls),
      (s) => total(s) >= accepted.acceptedTotal
    )
    // One more flush interval: a batch applied twice would show up now.
    await sleep(FLUSH_MS * 2)
    const inRedis = await stored(polls)
    const { lost, doubled } = compare(accepted.accepted, inRedis)
    console.log(
      `fault redis-maxmemory: accepted=${accepted.acceptedTotal} stored=${total(inRedis)} lost=${lost} doubled=${doubled} ` +
        `buffered-while-full=${bufferedWhileFull}`
    )
    expect(Object.fromEntries(inRedis)).toEqual(Object.fromEntries(accepted.accepted))
    expect(total(final)).toBe(accepted.acceptedTotal)
    const recovered = (await health()).json
    expect(recovered).toMatchObject({
      status: "ok",
      pending_votes: 0,
      flushes: [{ node: "redis", failing: false, failing_since_ms_ago: null, pending_votes: 0 }]
    })
    expect(recovered.flushes[0].last_success_ms_ago).toBeLessThan(recovered.flushes[0].last_failure_ms_ago)
    expect(current.output()).toMatch(/flush of batch \S+ to redis: .*OOM/)
    expect(await current.stop()).toBe(0)
  })
})
