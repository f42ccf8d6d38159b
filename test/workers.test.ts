import { describe, expect, it } from "@effect/vitest"
import { Cause, ConfigProvider, Duration, Effect, Either, Exit, Fiber, TestClock } from "effect"
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { availableParallelism, tmpdir } from "node:os"
import { join } from "node:path"
import { AppConfig, parseWorkers } from "../src/Config.js"
import {
  type Fork,
  journalsLeft,
  nextRestart,
  primary,
  RESTARTS,
  type WorkerEvents,
  WORKER_INDEX,
  WorkersFailed
} from "../src/Workers.js"
import { type App, rawRequest, runToExit } from "./support/app.js"
import { storedCounts, total } from "./support/load.js"
import { appsOnRedis } from "./support/onRedis.js"
import { eventually } from "./support/wait.js"

const load = (env: Record<string, string>) =>
  Effect.withConfigProvider(AppConfig, ConfigProvider.fromMap(new Map(Object.entries(env))))

const temporary = (name: string) => mkdtempSync(join(tmpdir(), `livepoll-workers-${name}-`))

describe("WORKERS", () => {
  it("is a whole number from 1 to 256, or auto for one per available CPU", () => {
    expect(parseWorkers("1")).toEqual(Either.right(1))
    expect(parseWorkers(" 4 ")).toEqual(Either.right(4))
    expect(parseWorkers("auto")).toEqual(Either.right(Math.min(256, availableParallelism())))
    for (const bad of ["0", "257", "-1", "1.5", "two", "", "0x2"])
      expect(Either.isLeft(parseWorkers(bad)), bad).toBe(true)
  })

  it.effect("defaults to 1; a bad value fails the config naming WORKERS", () =>
    Effect.gen(function* () {
      expect((yield* load({})).workers).toBe(1)
      expect((yield* load({ WORKERS: "auto" })).workers).toBe(Math.min(256, availableParallelism()))
      expect(String(yield* Effect.flip(load({ WORKERS: "many" })))).toContain("WORKERS")
    })
  )
})

/** A worker as the fake fork gives it to the primary: the test ends it when it likes. */
interface FakeWorker {
  readonly env: Readonly<Record<string, string>>
  readonly events: WorkerEvents
  readonly pid: number
  readonly signals: Array<string>
}

/** A fork that starts nothing; `onSignal` decides how a worker answers a signal (by default: SIGTERM, exit 0). */
const fakeFork = (onSignal: (w: FakeWorker, signal: string) => void = (w) => w.events.exit(0, null)) => {
  const forked: Array<FakeWorker> = []
  const fork: Fork = (env, events) => {
    const worker: FakeWorker = { env, events, pid: 1000 + forked.length, signals: [] }
    forked.push(worker)
    return {
      pid: worker.pid,
      kill: (signal) => {
        worker.signals.push(signal)
        onSignal(worker, signal)
      }
    }
  }
  return { forked, fork }
}

const indexOf = (w: FakeWorker) => w.env[WORKER_INDEX]
/** An interrupted primary's exit: interrupted only (the process exits 0), or with its shutdown's failure (exit 1). */
const stoppedCleanly = (exit: Exit.Exit<unknown, unknown>) =>
  Exit.isFailure(exit) && Cause.isInterruptedOnly(exit.cause)
const failureOf = (exit: Exit.Exit<unknown, unknown>) => (Exit.isFailure(exit) ? String(Cause.squash(exit.cause)) : "")
const settle = TestClock.adjust(Duration.zero)
const batched = { WORKERS: "2", POLL_STAGE: "batched" }

describe("the primary (fake workers, virtual time)", () => {
  it("restarts after the same delays the policy gives: twice as long each time, and forgets restarts past a minute", () => {
    expect(nextRestart(RESTARTS, [], 0)).toEqual({ _tag: "Restart", delayMs: 100 })
    expect(nextRestart(RESTARTS, [0, 1, 2], 10)).toEqual({ _tag: "Restart", delayMs: 800 })
    expect(nextRestart(RESTARTS, [0, 1, 2, 3, 4], 10)).toEqual({ _tag: "GiveUp", restarts: 5 })
    // Only the restart less than a minute old counts.
    expect(nextRestart(RESTARTS, [0, 30_000], 70_000)).toEqual({ _tag: "Restart", delayMs: 200 })
    expect(nextRestart({ ...RESTARTS, maxRestarts: 20 }, Array(12).fill(0), 1)).toEqual({
      _tag: "Restart",
      delayMs: 5000
    })
  })

  it.effect("forks N workers, each with its index and its own journal directory", () =>
    Effect.gen(function* () {
      const journal = join(tmpdir(), `livepoll-workers-absent-${process.pid}`)
      const { forked, fork } = fakeFork()
      const fiber = yield* Effect.fork(
        primary(yield* load({ ...batched, WORKERS: "3", JOURNAL_DIR: journal }), { fork })
      )
      yield* settle
      expect(forked.map((w) => [w.env[WORKER_INDEX], w.env.JOURNAL_DIR])).toEqual([
        ["0", join(journal, "worker-0")],
        ["1", join(journal, "worker-1")],
        ["2", join(journal, "worker-2")]
      ])
      yield* Fiber.interrupt(fiber)
    })
  )

  it.effect("a worker that dies is replaced with the same index and journal, after a back-off that doubles", () =>
    Effect.gen(function* () {
      const { forked, fork } = fakeFork()
      const fiber = yield* Effect.fork(primary(yield* load({ ...batched, JOURNAL_DIR: "/nonexistent/j" }), { fork }))
      yield* settle
      expect(forked).toHaveLength(2)
      forked[1]!.events.exit(null, "SIGKILL")
      yield* TestClock.adjust("99 millis")
      expect(forked).toHaveLength(2)
      yield* TestClock.adjust("1 millis")
      expect(forked).toHaveLength(3)
      expect(forked[2]!.env).toEqual(forked[1]!.env)
      forked[2]!.events.exit(1, null)
      yield* TestClock.adjust("199 millis")
      expect(forked).toHaveLength(3)
      yield* TestClock.adjust("1 millis")
      expect(forked.map(indexOf)).toEqual(["0", "1", "1", "1"])
      // A second exit event of a worker already replaced changes nothing.
      forked[1]!.events.exit(0, null)
      yield* TestClock.adjust("10 seconds")
      expect(forked).toHaveLength(4)
      yield* Fiber.interrupt(fiber)
    })
  )

  it.effect("a worker that keeps dying ends the primary after five restarts within a minute, the others stopped", () =>
    Effect.gen(function* () {
      const { forked, fork } = fakeFork()
      const fiber = yield* Effect.fork(primary(yield* load(batched), { fork }))
      yield* settle
      for (const delay of [100, 200, 400, 800, 1600]) {
        forked.at(-1)!.events.exit(1, null)
        yield* TestClock.adjust(Duration.millis(delay))
      }
      expect(forked.map(indexOf)).toEqual(["0", "1", "1", "1", "1", "1", "1"])
      forked.at(-1)!.events.exit(1, null)
      const exit = yield* Fiber.await(fiber)
      expect(Exit.isFailure(exit)).toBe(true)
      const error = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
      expect(error).toBeInstanceOf(WorkersFailed)
      expect((error as WorkersFailed).message).toMatch(/^worker 1 \(pid 1006\) exited with code 1, after 5 restarts/)
      // Worker 0 was asked to stop, and nothing was started after the primary gave up.
      expect(forked[0]!.signals).toEqual(["SIGTERM"])
      expect(forked).toHaveLength(7)
    })
  )

  it.effect("shutdown sends every worker SIGTERM once and ends cleanly when each exits 0", () =>
    Effect.gen(function* () {
      const { forked, fork } = fakeFork()
      const fiber = yield* Effect.fork(primary(yield* load(batched), { fork }))
      yield* settle
      forked.forEach((w) => w.events.listening())
      const exit = yield* Fiber.interrupt(fiber)
      expect(stoppedCleanly(exit)).toBe(true)
      expect(forked.map((w) => w.signals)).toEqual([["SIGTERM"], ["SIGTERM"]])
    })
  )

  it.effect("shutdown fails (exit 1) when a worker exits with another code, and starts no replacement", () =>
    Effect.gen(function* () {
      const { forked, fork } = fakeFork((w) => w.events.exit(w.pid === 1001 ? 1 : 0, null))
      const fiber = yield* Effect.fork(primary(yield* load(batched), { fork }))
      yield* settle
      forked.forEach((w) => w.events.listening())
      const exit = yield* Fiber.interrupt(fiber)
      expect(stoppedCleanly(exit)).toBe(false)
      expect(failureOf(exit)).toContain("shutdown: worker 1 exited with code 1")
      yield* TestClock.adjust("1 minute")
      expect(forked).toHaveLength(2)
    })
  )

  it.effect("a worker still starting when SIGTERM ends it (its default action) is a clean stop", () =>
    Effect.gen(function* () {
      const { forked, fork } = fakeFork((w) => w.events.exit(null, "SIGTERM"))
      const fiber = yield* Effect.fork(primary(yield* load(batched), { fork }))
      yield* settle
      forked[0]!.events.listening()
      const exit = yield* Fiber.interrupt(fiber)
      // Worker 0 was serving: ended by the signal itself, it did not flush.
      expect(stoppedCleanly(exit)).toBe(false)
      expect(failureOf(exit)).toContain("shutdown: worker 0 was killed by SIGTERM")
      const { forked: starting, fork: fork2 } = fakeFork((w) => w.events.exit(null, "SIGTERM"))
      const second = yield* Effect.fork(primary(yield* load(batched), { fork: fork2 }))
      yield* settle
      const clean = yield* Fiber.interrupt(second)
      expect(stoppedCleanly(clean)).toBe(true)
      expect(starting).toHaveLength(2)
    })
  )

  it.effect("a worker that does not exit within the shutdown deadline is killed, and the shutdown fails", () =>
    Effect.gen(function* () {
      // Worker 1 ignores SIGTERM; SIGKILL ends it.
      const { forked, fork } = fakeFork((w, signal) =>
        w.pid === 1000 || signal === "SIGKILL"
          ? w.events.exit(signal === "SIGKILL" ? null : 0, signal === "SIGKILL" ? "SIGKILL" : null)
          : undefined
      )
      const config = yield* load({ ...batched, SHUTDOWN_DRAIN_MS: "1000", SHUTDOWN_FLUSH_MS: "2000" })
      const fiber = yield* Effect.fork(primary(config, { fork, shutdownMarginMs: 500 }))
      yield* settle
      forked.forEach((w) => w.events.listening())
      const stopping = yield* Effect.fork(Fiber.interrupt(fiber))
      yield* TestClock.adjust("3499 millis")
      expect(forked[1]!.signals).toEqual(["SIGTERM"])
      yield* TestClock.adjust("1 millis")
      expect(forked[1]!.signals).toEqual(["SIGTERM", "SIGKILL"])
      const exit = yield* Fiber.join(stopping)
      expect(stoppedCleanly(exit)).toBe(false)
      expect(failureOf(exit)).toContain("workers still running after 3s 500ms were killed")
    })
  )

  it.effect("refuses the memory stage: each worker would count apart", () =>
    Effect.gen(function* () {
      const { forked, fork } = fakeFork()
      const error = yield* Effect.flip(primary(yield* load({ WORKERS: "2" }), { fork }))
      expect(String(error)).toContain("WORKERS")
      expect(String(error)).toContain("POLL_STAGE=memory")
      expect(forked).toHaveLength(0)
    })
  )

  it.effect("refuses to start while a journal no worker would replay holds votes; empty ones and torn tails pass", () =>
    Effect.gen(function* () {
      const dir = temporary("leftover")
      const journal = (sub: string, text: string) => {
        mkdirSync(join(dir, sub), { recursive: true })
        writeFileSync(join(dir, sub, "votes.journal"), text)
      }
      // The single process's journal, an empty one of worker 2, and a torn record of worker 3.
      writeFileSync(join(dir, "votes.journal"), "v 100 A\nv 100 B\n")
      journal("worker-2", "")
      journal("worker-3", "v 100 A")
      const env = { ...batched, JOURNAL_DIR: dir }
      const single = String(yield* Effect.flip(primary(yield* load(env), { fork: fakeFork().fork })))
      expect(single).toContain("JOURNAL_DIR")
      expect(single).toContain(`${dir} (2 votes, replayed with WORKERS=1)`)
      expect(single).not.toContain("worker-2")
      expect(single).not.toContain("worker-3")
      rmSync(join(dir, "votes.journal"))
      journal("worker-2", 'p [["100",[["A",3]]]]\n')
      // Worker 2's journal is left over with 2 workers, and worker 0's and 1's are in use.
      journal("worker-0", "v 100 A\n")
      const past = String(yield* Effect.flip(journalsLeft(yield* load(env))))
      expect(past).toContain(`${join(dir, "worker-2")} (3 votes, replayed with WORKERS=3)`)
      expect(past).not.toContain("worker-0")
      yield* journalsLeft(yield* load({ ...env, WORKERS: "3" }))
      // A single process replays none of the workers' journals.
      const alone = String(yield* Effect.flip(journalsLeft(yield* load({ ...env, WORKERS: "1" }))))
      expect(alone).toContain(`${join(dir, "worker-0")} (1 vote, replayed with WORKERS=2)`)
      rmSync(dir, { recursive: true, force: true })
    })
  )
})

// The app itself, as processes: a primary and two workers over a throwaway redis-server.
const { redis, start: startOnRedis } = appsOnRedis()

const start = async (env: Record<string, string>) => {
  const app = await startOnRedis({
    env: {
      WORKERS: "2",
      POLL_STAGE: "batched",
      // No timed flush within the test: whatever Redis holds came from the shutdown flushes or a replay.
      FLUSH_INTERVAL_MS: "60000",
      // An access line per vote, with its request id: the worker that answered it.
      ACCESS_LOG_SAMPLE: "1",
      ...env
    },
    readyTimeoutMs: 40_000
  })
  // Connections go only to workers that listen: wait for both.
  await eventually(async () => (listening(app).size === 2 ? true : undefined), {
    timeoutMs: 40_000,
    what: "both workers listening"
  })
  return app
}

/** The app's JSON log lines. */
const logLines = (app: App) =>
  app.lines.flatMap((line) => {
    try {
      return [JSON.parse(line) as { message: string; annotations: Record<string, unknown> }]
    } catch {
      return []
    }
  })

const listening = (app: App) =>
  new Set(
    logLines(app)
      .filter((l) => l.message.startsWith("listening on"))
      .map((l) => l.annotations.worker)
  )

/** Which worker answered each request id, from the access lines. */
const answeredBy = (app: App) =>
  new Map(
    logLines(app)
      .filter((l) => l.message === "request")
      .map((l) => [l.annotations.request_id as string, l.annotations.worker as number])
  )

/** `n` votes, each on a connection of its own (a keep-alive connection stays with one worker); their request ids. */
const vote = async (app: App, poll: string, n: number) => {
  const ids: Array<string> = []
  for (let i = 0; i < n; i++) {
    const reply = await rawRequest(app.port, {
      method: "POST",
      path: `/api/v1/vote/${poll}`,
      headers: { "content-type": "application/json" },
      chunks: [JSON.stringify({ option_id: "A" })]
    })
    expect(reply.status).toBe(200)
    ids.push(reply.headers.get("x-request-id")!)
  }
  return ids
}

/** How many of `ids` each worker answered, once every access line is in. */
const perWorker = async (app: App, ids: ReadonlyArray<string>) => {
  const by = await eventually(
    async () => answeredBy(app),
    (m) => ids.every((id) => m.has(id)),
    5000
  )
  const counts = new Map<unknown, number>()
  for (const id of ids) counts.set(by.get(id), (counts.get(by.get(id)) ?? 0) + 1)
  return counts
}

const stored = async (poll: string) => total(await storedCounts(redis(), [poll]))

describe("WORKERS=2 as processes (batched stage)", () => {
  it("both workers answer on the shared port; one killed with -9 is replaced and replays its journal; SIGTERM to the primary flushes every worker, each 200 counted once", async () => {
    const journal = temporary("journal")
    const app = await start({ JOURNAL_DIR: journal })
    const before = await vote(app, "w-votes", 20)
    const counts = await perWorker(app, before)
    expect([...counts.keys()].sort()).toEqual([0, 1])
    // Every vote waits in a worker's buffer (and its journal).
    expect(await stored("w-votes")).toBe(0)
    // A scrape through the shared port holds every worker's series, each labelled with its index, whichever worker
    // takes the connection: two scrapes, each with both workers' counts.
    for (let i = 0; i < 2; i++) {
      const metrics = await rawRequest(app.port, { method: "GET", path: "/metrics" })
      const accepted = new Map<number, number>()
      for (const [, worker, n] of metrics.text.matchAll(/^livepoll_votes_accepted_total\{worker="(\d+)"\} (\d+)$/gm)) {
        accepted.set(Number(worker), Number(n))
      }
      expect(accepted).toEqual(counts)
    }

    const line = await app.waitForLine(/"worker 1 started: pid \d+"/)
    const pid = Number(/pid (\d+)/.exec(line)![1])
    const from = app.lines.length
    process.kill(pid, "SIGKILL")
    await app.waitForLine(new RegExp(`worker 1 \\(pid ${pid}\\) was killed by SIGKILL; starting a replacement`), {
      from
    })
    await app.waitForLine(/"worker 1 started: pid \d+"/, { from })
    // The replacement holds exactly the votes the killed worker had answered, from the same journal.
    const replayed = await app.waitForLine(/journal replayed/, { from, timeoutMs: 40_000 })
    expect(replayed).toContain(`journal replayed: ${counts.get(1)} accepted votes not yet in the store`)
    expect(JSON.parse(replayed).annotations.worker).toBe(1)
    await app.waitForLine(/"listening on .*"worker":1\b/, { from, timeoutMs: 40_000 })

    const after = await vote(app, "w-votes", 10)
    expect(await stored("w-votes")).toBe(0)
    expect(await app.stop()).toBe(0)
    // Only the shutdown flushes could have written them: no flush interval passed, and nothing replays after the stop.
    expect(await stored("w-votes")).toBe(before.length + after.length)
    const flushed = logLines(app).filter((l) => l.message.startsWith("shutdown flush complete"))
    expect(flushed.map((l) => l.annotations.worker).sort()).toEqual([0, 1])
    expect(app.output()).toMatch(/shutdown: all 2 workers exited cleanly/)
    expect(readdirSync(journal).sort()).toEqual(["worker-0", "worker-1"])
    rmSync(journal, { recursive: true, force: true })
  }, 120_000)

  it("Ctrl-C reaches the primary and the workers alike: each worker lives through the second signal and flushes", async () => {
    const app = await start({})
    const ids = await vote(app, "w-ctrl-c", 12)
    expect([...(await perWorker(app, ids)).keys()].sort()).toEqual([0, 1])
    // A terminal's Ctrl-C signals the whole foreground process group; the primary then sends SIGTERM on as well.
    process.kill(-app.pid, "SIGINT")
    expect((await app.exited).code).toBe(0)
    expect(await stored("w-ctrl-c")).toBe(12)
    expect(app.output()).toMatch(/shutdown: all 2 workers exited cleanly/)
  }, 120_000)

  it("WORKERS=2 with POLL_STAGE=memory exits 1, naming WORKERS and the stage", async () => {
    const { code, output } = await runToExit({ env: { WORKERS: "2", POLL_STAGE: "memory" }, timeoutMs: 30_000 })
    expect(code).toBe(1)
    expect(output).toContain("Invalid data at WORKERS")
    expect(output).toContain("must be 1 with POLL_STAGE=memory")
    expect(output).not.toMatch(/worker \d started/)
  }, 40_000)
})
