import { Cause, Duration, Effect, Exit, Fiber, Scope } from "effect"
import type { OptionId, PollId } from "../src/Domain.js"
import { COMMAND_TIMEOUT_MS } from "../src/RedisClient.js"
import { slotOf } from "../src/RedisClient/Cluster.js"
import type { VoteStoreShape } from "../src/VoteStore.js"
import * as Cached from "../src/VoteStore/Cached.js"
import * as ClusterStore from "../src/VoteStore/Cluster.js"
import type { PartPipeline, StoreClient } from "../src/VoteStore/Cluster.js"
import * as WriteBehind from "../src/VoteStore/WriteBehind.js"
import * as FakeCluster from "./FakeCluster.js"
import * as Harness from "./Harness.js"
import { chance, drawRead, drawVote, drawWait, int, pick } from "./Harness.js"

/**
 * The `cluster` stage in simulation: app instances built from the real layers (write-behind buffer over read cache
 * over the Redis Cluster vote store, `ClusterStore.makeFrom`) over a fake Redis Cluster (sim/FakeCluster.ts) whose
 * masters fail over, losing what their replicas had not received, whose slots migrate, and whose answers get lost.
 * A scenario is drawn from a seed and run on virtual time, so a seed always replays the same run. The property:
 * once every node is back and every buffer flushed, the cluster holds exactly the accepted votes, none lost, none
 * doubled; and on the way no read misses a vote its instance accepted or counts one never accepted.
 */

export interface ClusterSimConfig {
  readonly seed: number
  readonly masters: number
  readonly instances: number
  readonly polls: ReadonlyArray<string>
  readonly options: ReadonlyArray<string>
  readonly cacheTtlMs: number
  readonly flushIntervalMs: number
  readonly latency: FakeCluster.Range
  readonly lag: FakeCluster.Range
  readonly failoverMs: number
  readonly syncMs: number
  readonly errorRate: number
  readonly lostAnswerRate: number
  readonly maxPollsPerBatch: number | undefined
  /** REDIS_WAIT_REPLICAS. */
  readonly waitReplicas: number | "auto"
}

/** Masters are named by their place among the masters up at the time, so an event stays meaningful when shrunk. */
export type ClusterEvent =
  | Harness.ClientEvent
  | { readonly _tag: "KillMaster"; readonly master: number }
  | { readonly _tag: "KillReplica"; readonly master: number }
  /** The node down longest comes back. */
  | { readonly _tag: "Rejoin" }
  /** The poll's slot, with its keys, to another master. */
  | { readonly _tag: "Migrate"; readonly poll: string; readonly to: number }
  | {
      readonly _tag: "Fault"
      readonly op: FakeCluster.Op
      readonly fault: FakeCluster.Fault
      readonly count: number
    }

export interface Scenario {
  readonly config: ClusterSimConfig
  readonly events: ReadonlyArray<ClusterEvent>
}

export const INVARIANTS = {
  lost: "once every node is back and every buffer flushed, the cluster holds every accepted vote",
  doubled: "the cluster never holds more votes than were accepted",
  "read-too-low": "a read counts every vote its instance had accepted before it",
  "read-too-high": "a read counts no vote that was not accepted",
  ...Harness.REQUEST_INVARIANTS
} as const
export type Invariant = keyof typeof INVARIANTS

export interface ClusterSimStats extends Harness.ClientStats<Invariant> {
  kills: number
  migrations: number
  cluster: FakeCluster.FakeClusterStats | undefined
}

/** The run goes on to its end after a violation, so the end-of-run checks are seen too. */
export type Outcome = Harness.Outcome<Scenario, ClusterSimStats, Invariant>

/** Where a deliberately broken build plugs in, as in sim/Broken.ts. */
export interface ClusterVariant {
  readonly name: string
  /** The client the store sends its batches over. */
  readonly flusher: (client: StoreClient) => StoreClient
}

export const real: ClusterVariant = { name: "real", flusher: (client) => client }

/**
 * The batch part without its marker's NX: each attempt sets a marker of its own (`…#<attempt>`), so a part that was
 * applied before is applied again, as the script would with `SET marker 1 EX ttl` in place of `SET … NX`.
 */
export const withoutMarkerNx: ClusterVariant = {
  name: "batch part without the marker's NX",
  flusher: (client) => {
    let attempts = 0
    return Object.assign(Object.create(client) as StoreClient, {
      batchPipeline: () => {
        const inner = client.batchPipeline()
        const attempt = ++attempts
        const pipeline: PartPipeline = {
          livepollApplyPart: (marker, counts, ttl, ...amounts) => {
            inner.livepollApplyPart(`${marker}#${attempt}`, counts, ttl, ...amounts)
            return pipeline
          },
          wait: (replicas, timeoutMs) => {
            inner.wait(replicas, timeoutMs)
            return pipeline
          },
          unlink: (key) => {
            inner.unlink(key)
            return pipeline
          },
          exec: () => inner.exec()
        }
        return pipeline
      }
    })
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Generation

export interface GenerateOptions {
  readonly events?: number
  readonly waitReplicas?: number | "auto"
}

const optionNames = ["A", "B", "C", "D"]

export const generate = (seed: number, options: GenerateOptions = {}): Scenario =>
  Harness.drawn(
    seed,
    Effect.gen(function* () {
      const instances = yield* int(1, 3)
      const flushIntervalMs = yield* pick([50, 100, 250])
      const config: ClusterSimConfig = {
        seed,
        masters: yield* pick([2, 3, 3, 4]),
        instances,
        polls: Array.from({ length: yield* int(3, 10) }, (_, i) => `p${i}`),
        options: optionNames.slice(0, yield* int(2, 4)),
        cacheTtlMs: yield* pick([50, 100, 250, 500]),
        flushIntervalMs,
        latency: { min: 0, max: yield* pick([0, 1, 2, 5]) },
        lag: { min: 1, max: yield* pick([5, 20, 50, 200]) },
        failoverMs: yield* pick([200, 1000, 3000]),
        syncMs: yield* pick([10, 50, 200]),
        errorRate: yield* pick([0, 0, 0.02, 0.05]),
        lostAnswerRate: yield* pick([0, 0, 0.02, 0.1]),
        maxPollsPerBatch: (yield* chance(0.5)) ? undefined : yield* int(1, 3),
        waitReplicas: options.waitReplicas ?? 1
      }

      const events: Array<ClusterEvent> = []
      for (let i = 0; i < (options.events ?? 120); i++) {
        const roll = yield* int(0, 99)
        if (roll < 41) {
          events.push(yield* drawVote(instances, config.polls, config.options))
        } else if (roll < 60) {
          events.push(yield* drawRead(instances, config.polls))
        } else if (roll < 75) {
          events.push(yield* drawWait(flushIntervalMs, 3000))
        } else if (roll < 81) {
          events.push({ _tag: "KillMaster", master: yield* int(0, 3) })
        } else if (roll < 83) {
          events.push({ _tag: "KillReplica", master: yield* int(0, 3) })
        } else if (roll < 89) {
          events.push({ _tag: "Rejoin" })
        } else if (roll < 95) {
          events.push({ _tag: "Migrate", poll: yield* pick(config.polls), to: yield* int(0, 3) })
        } else {
          const op = yield* pick<FakeCluster.Op>(["parts", "parts", "read"])
          const fault = yield* pick<FakeCluster.Fault>(op === "read" ? ["error"] : ["error", "lostAnswer"])
          events.push({ _tag: "Fault", op, fault, count: yield* int(1, 3) })
        }
      }
      return { config, events }
    })
  )

// ---------------------------------------------------------------------------------------------------------------------
// Running

interface Instance extends Harness.App {
  readonly index: number
}

export interface RunOptions {
  readonly trace?: boolean
  /**
   * Migrate slots into a master whatever the state of its replica, and kill a master or its replica while a slot
   * migrated into it is still on its way to the replica. Off by default: there the cluster can lose what the migration
   * moved whatever the app did (MIGRATE's writes are not the app's to WAIT for), so the scenarios keep clear of it.
   */
  readonly killWhileMigrating?: boolean
}

export const describeEvent = (event: ClusterEvent): string => {
  switch (event._tag) {
    case "Vote":
    case "Read":
    case "Wait":
      return Harness.describeClientEvent(event)
    case "KillMaster":
      return `kill    master #${event.master}`
    case "KillReplica":
      return `kill    replica of master #${event.master}`
    case "Rejoin":
      return `rejoin  the node down longest`
    case "Migrate":
      return `migrate ${event.poll}'s slot to master #${event.to}`
    case "Fault":
      return `fault   next ${event.count} ${event.op}: ${event.fault}`
  }
}

export const run = (scenario: Scenario, variant: ClusterVariant = real, options: RunOptions = {}): Outcome => {
  const { config, events } = scenario
  const recorder = new Harness.Recorder(INVARIANTS, options.trace ?? false)
  const { tick, note, check, violations } = recorder
  const now = () => recorder.now()
  const stats: ClusterSimStats = {
    events: events.length,
    votes: 0,
    votesAccepted: 0,
    reads: 0,
    readsFailed: 0,
    kills: 0,
    migrations: 0,
    cluster: undefined,
    checks: recorder.checks
  }

  /** Each vote belongs to the instance that took it. */
  const ballots = new Harness.Ballots<number>(tick)
  const votesOf = ballots.of

  const checkStored = (cluster: FakeCluster.FakeCluster) => {
    for (const poll of config.polls) {
      for (const [option, stored] of Object.entries(cluster.counts(poll))) {
        const possible = votesOf(poll).filter((v) => v.option === option && v.ok !== false).length
        check(
          "doubled",
          stored <= possible,
          () => `the cluster holds ${stored} votes for ${poll}/${option}, but only ${possible} were accepted`
        )
      }
    }
  }

  const checkRead = (instance: number, poll: string, start: number, end: number, counts: Record<string, number>) => {
    for (const option of new Set([...Object.keys(counts), ...config.options])) {
      const got = counts[option] ?? 0
      const own = votesOf(poll).filter(
        (v) => v.owner === instance && v.option === option && v.ok === true && v.end! < start
      ).length
      const possible = votesOf(poll).filter((v) => v.option === option && v.ok !== false && v.start < end).length
      const where = `i${instance} read ${poll}/${option} = ${got}`
      check("read-too-low", got >= own, () => `${where}, but this instance had accepted ${own} before the read`)
      check("read-too-high", got <= possible, () => `${where}, but only ${possible} votes had been accepted`)
    }
  }

  const launch = (cluster: FakeCluster.FakeCluster, index: number) =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const clients = cluster.clients(`i${index}`)
      const store = yield* Effect.gen(function* () {
        const inner = yield* ClusterStore.makeFrom(
          { ...clients, flusher: variant.flusher(clients.flusher) },
          { waitReplicas: config.waitReplicas, waitTimeoutMs: Math.floor(COMMAND_TIMEOUT_MS / 2) }
        )
        const cached = yield* Cached.make(inner, { ttl: Duration.millis(config.cacheTtlMs) })
        return yield* WriteBehind.make(cached, {
          flushInterval: Duration.millis(config.flushIntervalMs),
          instanceId: `i${index}`,
          // On virtual time: a first vote's options read goes out at once, not after a real turn of the loop.
          gatherReads: (read) => read(),
          ...(config.maxPollsPerBatch === undefined ? {} : { maxPollsPerBatch: config.maxPollsPerBatch })
        })
      }).pipe(Scope.extend(scope))
      const instance: Instance = { index, scope, store, requests: [] }
      return instance
    })

  /** What the instance's buffer could not write on its way out, as it reports it. */
  const stop = (instance: Instance) =>
    Effect.gen(function* () {
      yield* Fiber.awaitAll(instance.requests)
      yield* Scope.close(instance.scope, Exit.void)
      const left = (yield* instance.store.health).pendingVotes
      note(`i${instance.index} stopped; ${left} votes left unwritten`)
      return left
    })

  const request = <A>(
    instance: Instance,
    effect: Effect.Effect<A, unknown>,
    done: (exit: Exit.Exit<A, unknown>) => void
  ) =>
    Harness.request(
      recorder,
      instance.index,
      () => instance.requests,
      effect,
      (exit) =>
        check(
          "crash",
          !Harness.isDefect(exit),
          () => `a request on i${instance.index} died: ${Exit.isFailure(exit) ? Cause.pretty(exit.cause) : ""}`
        ),
      done
    )

  const upMasters = (cluster: FakeCluster.FakeCluster) =>
    cluster
      .nodes()
      .filter((node) => node.role === "master" && node.up)
      .map((node) => node.key)

  const perform = (
    cluster: FakeCluster.FakeCluster,
    event: ClusterEvent,
    instances: ReadonlyArray<Instance>
  ): Effect.Effect<void> => {
    switch (event._tag) {
      case "Vote": {
        const instance = instances[event.instance]!
        stats.votes++
        return ballots.cast(event, event.instance, stats, note, (done) =>
          request(instance, instance.store.vote(event.poll as PollId, event.option as OptionId), done)
        )
      }
      case "Read": {
        const instance = instances[event.instance]!
        stats.reads++
        const begin = tick()
        return request(instance, instance.store.results(event.poll as PollId), (exit) => {
          const end = tick()
          if (Exit.isFailure(exit)) {
            stats.readsFailed++
            note(`i${event.instance} read ${event.poll}: ${Cause.squash(exit.cause)}`)
            return
          }
          note(`i${event.instance} read ${event.poll}: ${Harness.describeCounts(exit.value.counts)}`)
          checkRead(event.instance, event.poll, begin, end, exit.value.counts)
        })
      }
      case "Wait":
        return Effect.sleep(Duration.millis(event.ms))
      case "KillMaster":
      case "KillReplica":
        return Effect.suspend(() => {
          const masters = upMasters(cluster)
          if (masters.length === 0) return Effect.void
          const master = masters[event.master % masters.length]!
          const replica = cluster.nodes().find((node) => node.role === "replica" && node.up && node.master === master)
          const key = event._tag === "KillMaster" ? master : replica?.key
          if (key === undefined) return Effect.void
          const at = options.killWhileMigrating ? now() : cluster.migrationsReplicatedAt(master)
          return Effect.zipRight(
            at > now() ? Effect.sleep(at - now()) : Effect.void,
            Effect.sync(() => {
              stats.kills++
              cluster.kill(key)
            })
          )
        })
      case "Rejoin":
        return Effect.sync(() => {
          const key = cluster.dead()[0]
          if (key !== undefined) cluster.rejoin(key)
        })
      case "Migrate":
        return Effect.sync(() => {
          const slot = slotOf(event.poll)
          const from = cluster.ownerOf(slot)
          const nodes = cluster.nodes()
          // Resharding a healthy cluster: into a master whose replicas are up and hold its data.
          const healthy = (key: string) =>
            options.killWhileMigrating ||
            nodes.every((node) => node.master !== key || (node.role === "replica" && node.up && node.synced))
          const targets = upMasters(cluster).filter((key) => key !== from && healthy(key))
          if (targets.length === 0) return
          if (cluster.migrate(slot, targets[event.to % targets.length]!)) stats.migrations++
        })
      case "Fault":
        return Effect.sync(() => cluster.script(event.op, ...Array.from({ length: event.count }, () => event.fault)))
    }
  }

  const program = Effect.gen(function* () {
    const clock = yield* Effect.clock
    recorder.now = () => clock.unsafeCurrentTimeMillis()
    const cluster = yield* FakeCluster.make({
      masters: config.masters,
      seed: config.seed,
      latency: config.latency,
      lag: config.lag,
      failoverMs: config.failoverMs,
      syncMs: config.syncMs,
      error: config.errorRate,
      lostAnswer: config.lostAnswerRate,
      note
    })
    stats.cluster = cluster.stats
    const instances: Array<Instance> = []
    for (let index = 0; index < config.instances; index++) instances.push(yield* launch(cluster, index))

    for (recorder.step = 0; recorder.step < events.length; recorder.step++) {
      note(describeEvent(events[recorder.step]!))
      yield* perform(cluster, events[recorder.step]!, instances)
      checkStored(cluster)
    }

    // The end: faults off, every node back, time for the buffers to flush, then every instance stopped cleanly.
    recorder.step = -1
    note("healing: faults off, every node back")
    cluster.clearScript()
    cluster.setRates({ error: 0, lostAnswer: 0 })
    for (const instance of instances) yield* Fiber.awaitAll(instance.requests)
    for (const key of cluster.dead()) cluster.rejoin(key)
    // Time for the replicas to resynchronise and for a flush round under way (its retries, each up to a command
    // time-out) and the next ones; the final flush on stop then finds little left.
    yield* Effect.sleep(
      Duration.millis(config.syncMs + config.lag.max + 3 * config.flushIntervalMs + 2 * COMMAND_TIMEOUT_MS)
    )
    let left = 0
    for (const instance of instances) left += yield* stop(instance)
    checkStored(cluster)

    const stored = cluster.polls()
    for (const poll of config.polls) {
      for (const option of config.options) {
        const want = votesOf(poll).filter((v) => v.option === option && v.ok === true).length
        const have = stored.get(poll)?.[option] ?? 0
        check(
          have < want ? "lost" : "doubled",
          have === want,
          () => `in the end the cluster holds ${have} votes for ${poll}/${option}; ${want} were accepted`
        )
      }
    }
    check("lost", left === 0, () => `the instances stopped with ${left} accepted votes they could not write`)
  }).pipe(Effect.provide(Harness.logsToTrace(note)))

  const result = Harness.runVirtual(program, events)
  const exit = result.exit
  if (Exit.isFailure(exit)) check("crash", false, () => Cause.pretty(exit.cause))
  return Harness.outcome(scenario, variant.name, recorder, stats, result)
}

// ---------------------------------------------------------------------------------------------------------------------
// Searching, shrinking and reporting

/** The first of `seeds` whose run breaks one of `invariants` (any, if unset). */
export const firstViolation = (
  seeds: ReadonlyArray<number>,
  options: GenerateOptions & { readonly variant?: ClusterVariant; readonly invariants?: ReadonlyArray<Invariant> }
): Outcome | undefined => {
  for (const seed of seeds) {
    const outcome = run(generate(seed, options), options.variant ?? real)
    const hit = outcome.violations.some((v) => options.invariants?.includes(v.invariant) ?? true)
    if (hit) return outcome
  }
  return undefined
}

/**
 * Delta debugging over the event list (drop halves, then quarters, ... then single events), keeping a candidate only
 * if it still breaks `invariant`.
 */
export const shrink = (
  failing: Outcome,
  invariant: Invariant,
  variant: ClusterVariant = real,
  budget = 500
): { readonly scenario: Scenario; readonly outcome: Outcome; readonly runs: number } => {
  let runs = 0
  const breaks = (scenario: Scenario) => {
    if (runs >= budget) return false
    runs++
    return run(scenario, variant).violations.some((v) => v.invariant === invariant)
  }
  const events = Harness.dropWhileKept(
    failing.scenario.events,
    (candidate) => breaks({ config: failing.scenario.config, events: candidate }),
    () => runs >= budget
  )
  const best = { config: failing.scenario.config, events }
  return { scenario: best, outcome: run(best, variant, { trace: true }), runs }
}

export const formatScenario = (scenario: Scenario): string => {
  const c = scenario.config
  return [
    `  config: masters=${c.masters} (one replica each) instances=${c.instances} polls=${c.polls.length} ` +
      `options=${c.options.length} waitReplicas=${c.waitReplicas}`,
    `          ttl=${c.cacheTtlMs}ms flush=${c.flushIntervalMs}ms latency=${c.latency.min}-${c.latency.max}ms ` +
      `lag=${c.lag.min}-${c.lag.max}ms failover=${c.failoverMs}ms sync=${c.syncMs}ms errors=${c.errorRate} ` +
      `lostAnswers=${c.lostAnswerRate} maxPollsPerBatch=${c.maxPollsPerBatch ?? "default"}`,
    ...Harness.formatEvents(scenario.events, describeEvent)
  ].join("\n")
}

export const formatFailure = (outcome: Outcome, shrunk?: ReturnType<typeof shrink>): string => {
  const v = outcome.violation!
  const shown = shrunk?.outcome ?? outcome
  return [
    `FAILED cluster seed=${outcome.scenario.config.seed} variant=${outcome.variant}`,
    ...Harness.formatViolation(
      v,
      INVARIANTS,
      shrunk === undefined
        ? ""
        : `; shrunk from ${outcome.scenario.events.length} to ${shrunk.scenario.events.length} events in ${shrunk.runs} runs`
    ),
    formatScenario(shrunk?.scenario ?? outcome.scenario),
    ...(shown.trace.length > 0 ? ["  trace:", ...Harness.traceTail(shown.trace)] : []),
    ...Harness.replayLines("replay", shrunk?.scenario ?? outcome.scenario)
  ].join("\n")
}
