import { execFileSync } from "node:child_process"
import { closeSync, mkdtempSync, openSync, rmdirSync, rmSync, writeSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type App, startApp } from "../support/app.js"
import { compare, type LoadReport, runLoad, storedCounts, total } from "../support/load.js"
import { eventually, sleep } from "../support/wait.js"
import { type RedisServer, startRedis } from "../support/redis.js"

const FLUSH_MS = 400
const OPTIONS = ["A", "B", "C"]

let redis: RedisServer
/** A small tmpfs of its own, so the journal's disk can be filled and freed without touching the machine's. */
let disk: string
const apps: Array<App> = []

/** Runs a mount command as root: directly when we are root, else through passwordless sudo. */
const asRoot = (command: string, args: ReadonlyArray<string>) =>
  process.getuid?.() === 0 ? execFileSync(command, args) : execFileSync("sudo", ["-n", command, ...args])

beforeAll(async () => {
  redis = await startRedis()
  disk = mkdtempSync(join(tmpdir(), "livepoll-journal-disk-"))
  try {
    asRoot("mount", ["-t", "tmpfs", "-o", "size=512k,mode=1777", "tmpfs", disk])
  } catch (error) {
    throw new Error(
      `this test mounts a tmpfs as the journal's disk: run it as root or with passwordless sudo (${String(error)})`
    )
  }
})

afterAll(async () => {
  await Promise.all(apps.map((a) => a.kill()))
  await redis?.stop()
  if (disk !== undefined) {
    try {
      asRoot("umount", [disk])
    } catch {
      asRoot("umount", ["-l", disk])
    }
    rmdirSync(disk)
  }
})

const start = async (journal: string, env: Record<string, string> = {}) => {
  const app = await startApp({
    env: {
      POLL_STAGE: "batched",
      REDIS_URL: redis.url,
      FLUSH_INTERVAL_MS: String(FLUSH_MS),
      JOURNAL_DIR: journal,
      ...env
    }
  })
  apps.push(app)
  return app
}

const filler = () => join(disk, "filler")

/** Fills the disk to the last byte: from here on, any write that needs a new page fails with ENOSPC. */
const fill = () => {
  const fd = openSync(filler(), "w")
  const chunk = Buffer.alloc(4096, 1)
  try {
    for (;;) writeSync(fd, chunk)
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOSPC") throw error
  } finally {
    closeSync(fd)
  }
}

const free = () => rmSync(filler(), { force: true })

/** What Redis holds for these polls, as `poll/option` -> count. */
const stored = (polls: ReadonlyArray<string>) => storedCounts(redis, polls)

/** Votes one at a time on `poll`, counting the 200s per option, until a vote gets `status` with `error`. */
const voteUntil = async (app: App, poll: string, accepted: Map<string, number>, status: number, error?: string) =>
  eventually(
    async () => {
      const reply = await app.vote(poll, "A")
      if (reply.status === 200) accepted.set(`${poll}/A`, (accepted.get(`${poll}/A`) ?? 0) + 1)
      return reply.status === status && (error === undefined || reply.json?.error === error) ? reply : undefined
    },
    (reply) => reply !== undefined,
    10_000
  )

const merged = (report: LoadReport, extra: Map<string, number>) => {
  const all = new Map(report.accepted)
  for (const [key, n] of extra) all.set(key, (all.get(key) ?? 0) + n)
  return all
}

const health = async (app: App) => app.request("GET", "/api/v1/health")

const pollsFor = (name: string) => Array.from({ length: 8 }, (_, i) => `${name}-${i}`)

describe("batched stage with JOURNAL_DIR on a disk that fills up", () => {
  it("full disk then freed: votes are refused with 503 journal_unavailable and not counted, then taken again", async () => {
    const journal = join(disk, "full-then-freed")
    const app = await start(journal)
    const polls = pollsFor("full")
    const probe = "full-probe"
    const probed = new Map<string, number>()
    let refusedReply: Awaited<ReturnType<App["vote"]>> | undefined
    let degraded: Awaited<ReturnType<typeof health>> | undefined
    const fault = (async () => {
      await sleep(700)
      fill()
      refusedReply = await voteUntil(app, probe, probed, 503, "journal_unavailable")
      degraded = await eventually(
        () => health(app),
        (h) => h.status === 503 && h.json?.journal?.ok === false
      )
      await sleep(FLUSH_MS * 3)
      free()
      await voteUntil(app, probe, probed, 200)
      await sleep(1000)
    })()
    // The load ends when the fault script does, however it ends; a failure in it fails the test after.
    const report = await runLoad(() => app, { polls, options: OPTIONS, clients: 16, until: fault.catch(() => {}) })
    await fault
    const accepted = merged(report, probed)
    const acceptedTotal = total(accepted)

    expect(refusedReply?.json).toMatchObject({ error: "journal_unavailable" })
    expect(refusedReply?.json.message).toContain("ENOSPC")
    expect(degraded?.json).toMatchObject({
      status: "degraded",
      journal: { ok: false, last_error: expect.stringContaining("ENOSPC") }
    })
    expect(degraded?.json.journal.failing_since_ms_ago).toBeGreaterThanOrEqual(0)
    expect(report.refused).toBeGreaterThan(0)
    expect(report.unanswered).toBe(0)

    const final = await eventually(
      () => stored([...polls, probe]),
      (s) => total(s) >= acceptedTotal
    )
    // One more flush interval: a batch applied twice, or a refused vote flushed late, would show up now.
    await sleep(FLUSH_MS * 2)
    const inRedis = await stored([...polls, probe])
    const { lost, doubled } = compare(accepted, inRedis)
    console.log(
      `fault journal-disk-full: accepted=${acceptedTotal} stored=${total(inRedis)} lost=${lost} doubled=${doubled} ` +
        `refused=${report.refused + 1}`
    )
    expect(Object.fromEntries(inRedis)).toEqual(Object.fromEntries(accepted))
    expect(total(final)).toBe(acceptedTotal)
    // The flush loop lived through the failed compactions and seals, and the app is healthy again.
    expect(app.output()).toMatch(/journal compaction failed/)
    expect(
      (
        await eventually(
          () => health(app),
          (h) => h.status === 200
        )
      ).json
    ).toMatchObject({
      status: "ok",
      pending_votes: 0,
      journal: { ok: true, failing_since_ms_ago: null }
    })
    expect(await app.stop()).toBe(0)
  })

  it("SIGKILL after the disk was full: the restarted instance replays the 200s and none of the 503s", async () => {
    const journal = join(disk, "kill-after-full")
    // No timed flush before the kill: every vote in Redis afterwards came back through the journal.
    let app = await start(journal, { FLUSH_INTERVAL_MS: "60000" })
    const polls = pollsFor("kill")
    const fault = (async () => {
      await sleep(500)
      fill()
      await eventually(
        () => health(app),
        (h) => h.json?.journal?.ok === false
      )
      await sleep(500)
    })()
    const report = await runLoad(() => app, { polls, options: OPTIONS, clients: 16, until: fault.catch(() => {}) })
    await fault
    // The load has ended: no request is in flight, so the 200s are exactly what must come back.
    await app.kill()
    expect(report.refused).toBeGreaterThan(0)
    expect(report.acceptedTotal).toBeGreaterThan(50)
    expect(total(await stored(polls))).toBe(0)
    free()

    app = await start(journal, { FLUSH_INTERVAL_MS: "300" })
    await eventually(
      () => stored(polls),
      (s) => total(s) >= report.acceptedTotal
    )
    await sleep(900)
    const inRedis = await stored(polls)
    const { lost, doubled } = compare(report.accepted, inRedis)
    console.log(
      `fault journal-full+sigkill: accepted=${report.acceptedTotal} stored=${total(inRedis)} lost=${lost} doubled=${doubled} ` +
        `refused=${report.refused}`
    )
    expect(Object.fromEntries(inRedis)).toEqual(Object.fromEntries(report.accepted))
    expect(app.output()).toMatch(/journal replayed/)
    expect(await app.stop()).toBe(0)
  })
})
