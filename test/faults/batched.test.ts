import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { type LoadReport, runLoad, storedCounts, total } from "../support/load.js"
import { appsOnRedis } from "../support/onRedis.js"
import { eventually, sleep } from "../support/wait.js"

const FLUSH_MS = 400
const OPTIONS = ["A", "B", "C"]

const { redis, start: startOnRedis } = appsOnRedis()

const start = (env: Record<string, string> = {}) =>
  startOnRedis({ env: { POLL_STAGE: "batched", FLUSH_INTERVAL_MS: String(FLUSH_MS), ...env } })

/** What Redis holds for these polls, as `poll/option` -> count. */
const stored = (polls: ReadonlyArray<string>) => storedCounts(redis(), polls)

/** Every promised vote is in Redis exactly once: per poll and option, stored equals accepted. */
const expectExactlyAccepted = async (polls: ReadonlyArray<string>, report: LoadReport) => {
  const final = await eventually(
    () => stored(polls),
    (s) => total(s) >= report.acceptedTotal
  )
  // One more flush interval: a batch applied twice would show up now.
  await sleep(FLUSH_MS * 2)
  expect(Object.fromEntries(await stored(polls))).toEqual(Object.fromEntries(report.accepted))
  expect(total(final)).toBe(report.acceptedTotal)
}

const pollsFor = (name: string) => Array.from({ length: 8 }, (_, i) => `${name}-${i}`)

describe("batched stage under faults: Redis ends with exactly the votes answered 200", () => {
  it("redis-server stopped mid-load and restarted after longer than a flush interval", async () => {
    const app = await start()
    const polls = pollsFor("restart")
    const load = runLoad(() => app, { polls, options: OPTIONS, clients: 16, until: sleep(3000) })
    await sleep(700)
    await redis().halt()
    await sleep(FLUSH_MS * 3)
    await redis().start()
    const report = await load
    expect(report.acceptedTotal).toBeGreaterThan(200)
    expect(report.unanswered).toBe(0)
    await expectExactlyAccepted(polls, report)
    expect(app.output()).toMatch(/failed, kept for retry/)
    console.log(`fault redis-restart: accepted=${report.acceptedTotal} refused=${report.refused}`)
    await app.stop()
  })

  it("CLIENT PAUSE longer than the command timeout during flushes: late applies are not doubled", async () => {
    const app = await start()
    const polls = pollsFor("pause")
    const admin = redis().client()
    const load = runLoad(() => app, { polls, options: OPTIONS, clients: 16, until: sleep(4000) })
    await sleep(600)
    // Writes wait 2.5 s: longer than the 1.5 s command timeout, so in-flight batches fail on the client and then
    // apply on the server once the pause ends. The retry under the same id must be a no-op.
    await admin.call("CLIENT", "PAUSE", "2500", "WRITE")
    const report = await load
    admin.disconnect()
    expect(report.acceptedTotal).toBeGreaterThan(200)
    await expectExactlyAccepted(polls, report)
    // The fault was real: at least one batch timed out on the client while the server still held it.
    expect(app.output()).toMatch(/flush of batch \S+ to redis: .*no answer in time/)
    console.log(`fault client-pause: accepted=${report.acceptedTotal} refused=${report.refused}`)
    await app.stop()
  })

  it("SIGTERM mid-load: in-flight requests finish, the final flush writes everything, exit code 0", async () => {
    const app = await start({ FLUSH_INTERVAL_MS: "60000" })
    const polls = pollsFor("sigterm")
    let stopped: Promise<number | null> | undefined
    const load = runLoad(() => app, {
      polls,
      options: OPTIONS,
      clients: 16,
      until: sleep(1000).then(async () => {
        stopped = app.stop("SIGTERM")
        await stopped
      })
    })
    const report = await load
    expect(await stopped).toBe(0)
    expect(report.acceptedTotal).toBeGreaterThan(100)
    // Nothing was flushed on the timer (60 s): everything in Redis came from the shutdown flush.
    expect(Object.fromEntries(await stored(polls))).toEqual(Object.fromEntries(report.accepted))
    expect(app.output()).toMatch(/shutdown flush complete/)
    console.log(
      `fault sigterm: accepted=${report.acceptedTotal} refused=${report.refused} unanswered=${report.unanswered}`
    )
  })

  it("SIGKILL mid-load with JOURNAL_DIR: the restarted instance replays what was not flushed", async () => {
    const journal = mkdtempSync(join(tmpdir(), "livepoll-journal-"))
    try {
      // No timed flush before the kill: every accepted vote can only come back through the journal.
      let app = await start({ FLUSH_INTERVAL_MS: "60000", JOURNAL_DIR: journal })
      const polls = pollsFor("sigkill")
      const report = await runLoad(() => app, {
        polls,
        options: OPTIONS,
        clients: 16,
        until: sleep(1500).then(() => app.kill())
      })
      expect(report.acceptedTotal).toBeGreaterThan(100)
      const beforeRestart = total(await stored(polls))
      app = await start({ FLUSH_INTERVAL_MS: "300", JOURNAL_DIR: journal })
      const after = await eventually(
        () => stored(polls),
        (s) => total(s) >= report.acceptedTotal
      )
      await sleep(900)
      const final = await stored(polls)
      // Every 200 is there; a request cut off by the kill may or may not have been counted, but nothing more.
      for (const [key, n] of report.accepted) expect(final.get(key) ?? 0).toBeGreaterThanOrEqual(n)
      expect(total(final)).toBeLessThanOrEqual(report.acceptedTotal + report.unanswered)
      expect(total(final)).toBe(total(after))
      expect(beforeRestart).toBe(0)
      expect(app.output()).toMatch(/journal replayed/)
      console.log(
        `fault sigkill+journal: accepted=${report.acceptedTotal} stored=${total(final)} unanswered=${report.unanswered} in-redis-before-restart=${beforeRestart}`
      )
      await app.stop()
    } finally {
      rmSync(journal, { recursive: true, force: true })
    }
  })
})
