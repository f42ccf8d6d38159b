import { ConfigError, Data, Deferred, Duration, Effect, FiberSet, Layer, Option, Runtime } from "effect"
import cluster from "node:cluster"
import { existsSync, readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import type { AppConfig } from "./Config.js"
import { AggregatorRegistry } from "prom-client"
import * as Metrics from "./Metrics.js"
import { replay } from "./VoteStore/Journal.js"

/**
 * `WORKERS=N` (N > 1): a primary process that forks N workers through node:cluster, each running the app as a single
 * process does, on the same port (on Linux the primary accepts the connections and hands them to the workers in
 * turn). Each worker is an instance of its own: its own write-behind buffer, caches, connections, metrics and, with
 * `JOURNAL_DIR`, journal (`JOURNAL_DIR/worker-<i>`), so a worker that dies is replaced by one with the same index that
 * replays exactly the journal the dead one kept. SIGTERM or SIGINT to the primary goes on to every worker, each flushes
 * as a single process does, and the primary exits 0 only when every one of them exited cleanly.
 */

/** The variable that tells a worker its index; set by the primary, never by hand. */
export const WORKER_INDEX = "LIVEPOLL_WORKER_INDEX"

/** The file Journal.makeFile keeps in its directory. */
const JOURNAL_FILE = "votes.journal"

/** Worker `index`'s journal directory under `JOURNAL_DIR`, when several workers run. */
export const journalDirOf = (dir: string, index: number) => join(dir, `worker-${index}`)

/** The primary gave up, or its workers did not all stop cleanly. */
export class WorkersFailed extends Data.TaggedError("WorkersFailed")<{ readonly message: string }> {}

/**
 * Restarts of a worker that dies while the app runs: the first after `firstDelayMs`, each next one twice as late (at
 * most `maxDelayMs`); a worker that has been restarted `maxRestarts` times within `windowMs` and dies again ends the
 * primary, since something is wrong that a restart does not mend (a port taken, a file it cannot open).
 */
export interface RestartPolicy {
  readonly windowMs: number
  readonly maxRestarts: number
  readonly firstDelayMs: number
  readonly maxDelayMs: number
}

export const RESTARTS: RestartPolicy = { windowMs: 60_000, maxRestarts: 5, firstDelayMs: 100, maxDelayMs: 5_000 }

export type Restart =
  { readonly _tag: "Restart"; readonly delayMs: number } | { readonly _tag: "GiveUp"; readonly restarts: number }

/** What to do about a worker that died at `now`, restarted before at `restartedAt`. */
export const nextRestart = (policy: RestartPolicy, restartedAt: ReadonlyArray<number>, now: number): Restart => {
  const recent = restartedAt.filter((at) => now - at < policy.windowMs).length
  return recent >= policy.maxRestarts
    ? { _tag: "GiveUp", restarts: recent }
    : { _tag: "Restart", delayMs: Math.min(policy.maxDelayMs, policy.firstDelayMs * 2 ** recent) }
}

/** A running worker, as the primary sees it. */
export interface WorkerProcess {
  readonly pid: number | undefined
  readonly kill: (signal: NodeJS.Signals) => void
}

export interface WorkerEvents {
  /** The worker's listener is open: it takes connections from here on. */
  readonly listening: () => void
  readonly exit: (code: number | null, signal: string | null) => void
  readonly error: (error: Error) => void
}

/** Starts a worker with `env` on top of the primary's environment; node:cluster by default, a fake in tests. */
export type Fork = (env: Readonly<Record<string, string>>, events: WorkerEvents) => WorkerProcess

const clusterFork: Fork = (env, events) => {
  const worker = cluster.fork(env)
  worker.once("listening", events.listening)
  worker.once("exit", events.exit)
  // An IPC error with no listener would end the primary.
  worker.on("error", events.error)
  return { pid: worker.process.pid, kill: (signal) => void worker.process.kill(signal) }
}

/** The environment of worker `index`: its index and, with a journal, its own journal directory. */
export const workerEnv = (c: AppConfig, index: number): Record<string, string> => ({
  [WORKER_INDEX]: String(index),
  ...Option.match(c.journalDir, { onNone: () => ({}), onSome: (dir) => ({ JOURNAL_DIR: journalDirOf(dir, index) }) })
})

/** Votes the journal in `dir` holds that no store has confirmed; 0 when there is none. */
const unconfirmedVotes = (dir: string): number => {
  const file = join(dir, JOURNAL_FILE)
  if (!existsSync(file)) return 0
  const { pending, batches } = replay(readFileSync(file, "utf8"))
  let votes = 0
  for (const increments of [pending, ...batches.map((b) => b.batch.increments)]) {
    for (const options of increments.values()) for (const n of options.values()) votes += n
  }
  return votes
}

/**
 * With `workers` processes, the journals under `dir` that no worker would replay and that still hold votes: the
 * single process's own (`dir`) when several run, `dir/worker-<i>` of an index past the last. Started as it is, the
 * app would never send those votes; it stops instead, saying which `WORKERS` replays each.
 */
export const leftoverJournals = (dir: string, workers: number) =>
  Effect.suspend(() => {
    if (!existsSync(dir)) return Effect.void
    const indexes = readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
      const index = entry.isDirectory() ? /^worker-(\d+)$/.exec(entry.name)?.[1] : undefined
      return index === undefined ? [] : [Number(index)]
    })
    const candidates = [
      ...(workers > 1 ? [{ dir, replayedBy: 1 }] : []),
      ...indexes
        .filter((i) => workers === 1 || i >= workers)
        .map((i) => ({ dir: journalDirOf(dir, i), replayedBy: Math.max(2, i + 1) }))
    ]
    const left = candidates.flatMap((c) => {
      const votes = unconfirmedVotes(c.dir)
      const count = `${votes} vote${votes === 1 ? "" : "s"}`
      return votes === 0 ? [] : [`${c.dir} (${count}, replayed with WORKERS=${c.replayedBy})`]
    })
    return left.length === 0
      ? Effect.void
      : Effect.fail(
          ConfigError.InvalidData(
            ["JOURNAL_DIR"],
            `holds accepted votes that WORKERS=${workers} would not replay: ${left.join(", ")}; start once with ` +
              `that WORKERS so they are sent, then change it`
          )
        )
  })

/** The journals under `JOURNAL_DIR` that `c.workers` processes would leave unreplayed, if any: the app stops. */
export const journalsLeft = (c: AppConfig) =>
  Option.match(c.journalDir, { onNone: () => Effect.void, onSome: (dir) => leftoverJournals(dir, c.workers) })

/** What must hold before several workers start: a shared store, and no journal left behind. */
const refusals = (c: AppConfig) =>
  Effect.gen(function* () {
    // The memory stage counts in the process (and so do its rate limits): N workers would be N apart polls.
    if (c.stage === "memory") {
      return yield* Effect.fail(
        ConfigError.InvalidData(
          ["WORKERS"],
          `must be 1 with POLL_STAGE=memory, got ${c.workers}: each worker would count its own votes and answer ` +
            `reads from its own counts; choose a stage that keeps its counts in Redis`
        )
      )
    }
    yield* journalsLeft(c)
  })

const describeExit = (code: number | null, signal: string | null) =>
  signal !== null ? `was killed by ${signal}` : `exited with code ${code}`

interface Slot {
  readonly index: number
  process: WorkerProcess | undefined
  listening: boolean
  /** When this index was restarted, for the restart policy. */
  restartedAt: ReadonlyArray<number>
  /** How the worker alive when shutdown began ended. */
  stopped: { readonly code: number | null; readonly signal: string | null; readonly listening: boolean } | undefined
}

export interface PrimaryOptions {
  readonly fork?: Fork
  readonly policy?: RestartPolicy
  /** Beyond the workers' own deadlines (drain, then the final flush), how long they may take to exit. */
  readonly shutdownMarginMs?: number
}

/**
 * The primary: forks `c.workers` workers and replaces any that dies, until it is interrupted (SIGTERM, SIGINT); then
 * it sends SIGTERM to every worker and waits for each. It fails when a worker keeps dying, and its shutdown dies
 * (the process exits 1) when a worker does not exit with code 0 or has to be killed after the deadline.
 */
export const primary = (
  c: AppConfig,
  options: PrimaryOptions = {}
): Effect.Effect<never, ConfigError.ConfigError | WorkersFailed> =>
  Effect.scoped(
    Effect.gen(function* () {
      yield* refusals(c)
      const fork = options.fork ?? clusterFork
      const policy = options.policy ?? RESTARTS
      // Its fibers (logs, restarts after their delay) run until the shutdown below has ended.
      const run = yield* FiberSet.makeRuntime<never>()
      const clock = yield* Effect.clock
      const gaveUp = yield* Deferred.make<never, WorkersFailed>()
      const slots: Array<Slot> = Array.from({ length: c.workers }, (_, index) => ({
        index,
        process: undefined,
        listening: false,
        restartedAt: [],
        stopped: undefined
      }))
      let stopping = false
      /** Called whenever a worker exits during shutdown. */
      let onStopped = () => {}

      const start = (slot: Slot) => {
        slot.listening = false
        const worker = fork(workerEnv(c, slot.index), {
          listening: () => void (slot.listening = true),
          exit: (code, signal) => exited(slot, worker, code, signal),
          error: (error) => void run(Effect.logWarning(`worker ${slot.index}: ${error.message}`))
        })
        slot.process = worker
        run(Effect.logInfo(`worker ${slot.index} started: pid ${worker.pid}`))
      }

      const exited = (slot: Slot, worker: WorkerProcess, code: number | null, signal: string | null) => {
        if (slot.process !== worker) return
        slot.process = undefined
        if (stopping) {
          slot.stopped = { code, signal, listening: slot.listening }
          return onStopped()
        }
        const now = clock.unsafeCurrentTimeMillis()
        const what = `worker ${slot.index} (pid ${worker.pid}) ${describeExit(code, signal)}`
        const next = nextRestart(policy, slot.restartedAt, now)
        if (next._tag === "GiveUp") {
          const window = Duration.format(Duration.millis(policy.windowMs))
          return void Deferred.unsafeDone(
            gaveUp,
            Effect.fail(
              new WorkersFailed({
                message: `${what}, after ${next.restarts} restarts within ${window}: giving up, stopping the others`
              })
            )
          )
        }
        slot.restartedAt = [...slot.restartedAt.filter((at) => now - at < policy.windowMs), now]
        run(
          Effect.logError(`${what}; starting a replacement in ${next.delayMs} ms`).pipe(
            Effect.zipRight(Effect.sleep(Duration.millis(next.delayMs))),
            Effect.zipRight(Effect.sync(() => (stopping ? undefined : start(slot))))
          )
        )
      }

      const alive = () => slots.filter((s) => s.process !== undefined)
      const allStopped = Effect.async<void>((resume) => {
        onStopped = () => {
          if (alive().length === 0) resume(Effect.void)
        }
        onStopped()
      })
      const deadline = Duration.millis(c.drainMs + c.shutdownFlushMs + (options.shutdownMarginMs ?? 5000))

      // Added after the FiberSet, so it runs before the set's fibers are interrupted: its log lines still go out.
      yield* Effect.addFinalizer(() =>
        Effect.gen(function* () {
          stopping = true
          const stopped = alive()
          for (const slot of stopped) slot.process!.kill("SIGTERM")
          // A finalizer is uninterruptible: the wait must be made interruptible for the deadline to end it.
          const inTime = yield* Effect.interruptible(allStopped).pipe(
            Effect.timeoutTo({ duration: deadline, onSuccess: () => true, onTimeout: () => false })
          )
          if (!inTime) {
            for (const slot of alive()) slot.process!.kill("SIGKILL")
            yield* allStopped
          }
          // A worker ended by SIGTERM before it had set up its handling of it had not started serving.
          const unclean = stopped.flatMap((s) =>
            s.stopped === undefined || s.stopped.code === 0 || (s.stopped.signal === "SIGTERM" && !s.stopped.listening)
              ? []
              : [`worker ${s.index} ${describeExit(s.stopped.code, s.stopped.signal)}`]
          )
          if (!inTime) unclean.unshift(`workers still running after ${Duration.format(deadline)} were killed`)
          if (unclean.length === 0) {
            return yield* Effect.logInfo(
              stopped.length === c.workers
                ? `shutdown: all ${c.workers} workers exited cleanly`
                : `shutdown: the ${stopped.length} workers running exited cleanly (${c.workers - stopped.length} down)`
            )
          }
          const message = `shutdown: ${unclean.join("; ")}`
          yield* Effect.logError(message)
          // Dying in a finalizer turns the interrupted exit into a failure: the process exits 1.
          return yield* Effect.die(new WorkersFailed({ message }))
        })
      )

      yield* answerScrapes
      yield* Effect.logInfo(`livepoll primary: pid ${process.pid}, starting ${c.workers} workers`)
      for (const slot of slots) start(slot)
      return yield* Deferred.await(gaveUp)
    })
  )

/**
 * Runs the app in worker `index`: its log lines carry the index, and a second SIGTERM or SIGINT is absorbed. A Ctrl-C
 * reaches the workers as well as the primary, which then sends SIGTERM on; without a listener left after the first
 * signal, the second would end the worker at once, before its final flush.
 */
export const asWorker =
  (index: number) =>
  <A, E, R>(app: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.suspend(() => {
      for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => {})
      return Effect.annotateLogs(app, "worker", index)
    })

/** This worker's index, as the primary set it; undefined in a worker something else started. */
export const workerIndex = (): number | undefined => {
  const index = process.env[WORKER_INDEX]
  return index !== undefined && /^\d+$/.test(index) ? Number(index) : undefined
}

/** A worker asks the primary for every worker's metrics with this message, and gets them back in one like it. */
const SCRAPE = "livepoll:scrape"
interface ScrapeMessage {
  readonly type: typeof SCRAPE
  readonly id: number
  readonly body?: string
  readonly error?: string
}
const isScrape = (message: unknown): message is ScrapeMessage =>
  typeof message === "object" && message !== null && (message as { type?: unknown }).type === SCRAPE

/**
 * How long a worker waits for the primary's answer before it answers with its own registry alone. prom-client's
 * aggregation gives up on a worker that does not answer after 5 s; a scrape should not take that long.
 */
export const SCRAPE_WAIT_MS = 2000

/**
 * In the primary: a worker's scrape request is answered with every worker's registry (prom-client's
 * AggregatorRegistry asks each over IPC). Each worker's series carry its `worker` label, so the aggregation keeps
 * them apart: the exposition is every worker's metrics, one series per worker, as separate instances would give.
 */
const answerScrapes = Effect.acquireRelease(
  Effect.sync(() => {
    const aggregator = new AggregatorRegistry()
    const onMessage = (worker: { send: (message: ScrapeMessage) => boolean }, message: unknown) => {
      if (!isScrape(message)) return
      aggregator.clusterMetrics().then(
        (body) => worker.send({ type: SCRAPE, id: message.id, body }),
        (error: Error) => worker.send({ type: SCRAPE, id: message.id, error: error.message })
      )
    }
    cluster.on("message", onMessage)
    return onMessage
  }),
  (onMessage) => Effect.sync(() => cluster.off("message", onMessage))
)

/**
 * The metrics of worker `index`: its registry labels every series `worker="<index>"`, answers the primary's requests
 * for it, and a scrape (`GET /metrics` on whichever worker takes the connection) answers every worker's series,
 * gathered by the primary; its own alone, with a log line, if the primary does not answer within SCRAPE_WAIT_MS.
 */
export const metricsLayer = (index: number): Layer.Layer<Metrics.Metrics> =>
  Layer.scoped(
    Metrics.Metrics,
    Effect.gen(function* () {
      const own = Metrics.make()
      own.registry.setDefaultLabels({ worker: String(index) })
      // Constructed in a worker, it answers the primary's requests with the registries set here.
      new AggregatorRegistry()
      AggregatorRegistry.setRegistries([own.registry])
      const waiting = new Map<number, (answer: ScrapeMessage | undefined) => void>()
      const onMessage = (message: unknown) => {
        if (isScrape(message)) waiting.get(message.id)?.(message)
      }
      process.on("message", onMessage)
      yield* Effect.addFinalizer(() => Effect.sync(() => process.off("message", onMessage)))
      const runFork = Runtime.runFork(yield* Effect.runtime<never>())
      let next = 0
      const ask = () =>
        new Promise<ScrapeMessage | undefined>((resolve) => {
          const id = next++
          const done = (answer: ScrapeMessage | undefined) => {
            clearTimeout(timer)
            waiting.delete(id)
            resolve(answer)
          }
          const timer = setTimeout(() => done(undefined), SCRAPE_WAIT_MS)
          waiting.set(id, done)
          if (process.send === undefined || !process.send({ type: SCRAPE, id })) done(undefined)
        })
      const scrape = async () => {
        const answer = await ask()
        if (answer?.body !== undefined) return { contentType: own.registry.contentType, body: answer.body }
        runFork(
          Effect.logWarning(
            `metrics of the other workers unavailable (${answer?.error ?? "no answer from the primary"}): ` +
              `this scrape holds worker ${index}'s alone`
          )
        )
        return own.scrape()
      }
      return { ...own, scrape }
    })
  )
