import { Cause, Duration, Effect, Exit, Fiber, Random, Scope } from "effect"
import type { OptionId, PollId } from "../src/Domain.js"
import * as Journal from "../src/VoteStore/Journal.js"
import { COMMAND_TIMEOUT_MS } from "../src/RedisClient.js"
import * as Ring from "../src/Ring.js"
import type { VoteStoreShape } from "../src/VoteStore.js"
import * as Cached from "../src/VoteStore/Cached.js"
import * as Sharded from "../src/VoteStore/Sharded.js"
import * as WriteBehind from "../src/VoteStore/WriteBehind.js"
import * as FakeRedis from "./FakeRedis.js"
import * as Harness from "./Harness.js"
import { drawRead, drawVote, drawWait, int, pick, chance } from "./Harness.js"
import * as MemoryJournal from "./MemoryJournal.js"

/**
 * Deterministic simulation of a livepoll cluster: several app instances, each the `full` stage (write-behind buffer
 * over read cache over the consistent-hash ring) built from the real layers, over in-memory Redis shards with
 * latency, errors, answers lost after the write, outages and restarts. Clients' votes and reads run as concurrent
 * fibers; a scenario (configuration + event list) is generated from a seed and run in virtual time, so one seed
 * always replays the same run. Invariants are checked at every step and at the end; a failing scenario is shrunk to
 * a short event list that still breaks the same invariant.
 */

export interface SimConfig {
  readonly seed: number
  readonly shards: ReadonlyArray<string>
  readonly instances: number
  /** Each instance's `REDIS_NODES` order; the ring must not care. */
  readonly nodeOrders: ReadonlyArray<ReadonlyArray<string>>
  readonly polls: ReadonlyArray<string>
  readonly options: ReadonlyArray<string>
  readonly cacheTtlMs: number
  readonly flushIntervalMs: number
  readonly latency: { readonly min: number; readonly max: number }
  readonly errorRate: number
  readonly timeoutAfterApplyRate: number
  /** Whether instances keep a journal (JOURNAL_DIR): then a restart during an outage loses nothing either. */
  readonly journal: boolean
  readonly maxEntries: number | undefined
  readonly maxPollsPerBatch: number | undefined
}

export type SimEvent =
  | Harness.ClientEvent
  | { readonly _tag: "Restart"; readonly instance: number }
  | { readonly _tag: "ShardDown"; readonly shard: string }
  | { readonly _tag: "ShardUp"; readonly shard: string }
  | {
      readonly _tag: "Fault"
      readonly shard: string
      readonly op: FakeRedis.Op
      readonly fault: FakeRedis.Fault
      readonly count: number
    }

export interface Scenario {
  readonly config: SimConfig
  readonly events: ReadonlyArray<SimEvent>
}

export const INVARIANTS = {
  "read-too-low": "a read counts every vote its instance accepted, and all the store held one cache TTL ago",
  "read-too-high": "a read counts no more than its instance accepted plus what the store holds",
  monotonic: "a poll's counts never go down as seen by one instance",
  placement: "each poll's data lives on exactly one shard, the one the ring assigns",
  doubled: "no shard counts more votes than were accepted",
  lost: "after a clean shutdown the store holds exactly the accepted votes and no journal holds any",
  ...Harness.REQUEST_INVARIANTS
} as const
export type Invariant = keyof typeof INVARIANTS

export interface SimStats extends Harness.ClientStats<Invariant> {
  votesRefused: number
  restarts: number
  outages: number
  faults: number
  storeCalls: number
  batchesApplied: number
  retriesAbsorbed: number
  timeoutsAfterApply: number
}

/** The run stops at the end of the step that saw the first violation. */
export type Outcome = Harness.Outcome<Scenario, SimStats, Invariant>

/**
 * Where a deliberately broken build plugs in. The real cluster is `real`; sim/Broken.ts holds the broken ones.
 */
export interface Variant {
  readonly name: string
  /** The router over the shards, given in the instance's `REDIS_NODES` order. */
  readonly route: (nodes: ReadonlyArray<Sharded.ShardNode>) => VoteStoreShape
  /** The read cache over the router. */
  readonly cache: (inner: VoteStoreShape, options: Cached.CacheOptions) => Effect.Effect<VoteStoreShape>
  /** Each shard's store as an instance sees it. */
  readonly shard: (store: VoteStoreShape) => VoteStoreShape
  /** The store the write-behind buffer flushes into. */
  readonly beneathBuffer: (store: VoteStoreShape) => VoteStoreShape
}

export const real: Variant = {
  name: "real",
  route: (nodes) => Sharded.make(nodes),
  cache: (inner, options) => Cached.make(inner, options),
  shard: (store) => store,
  beneathBuffer: (store) => store
}

// ---------------------------------------------------------------------------------------------------------------------
// Generation

export interface GenerateOptions {
  readonly events?: number
}

const shardNames = ["redis_7000", "redis_7001", "redis_7002", "redis_7003"]
const optionNames = ["A", "B", "C", "D", "E"]

export const generate = (seed: number, options: GenerateOptions = {}): Scenario =>
  Harness.drawn(
    seed,
    Effect.gen(function* () {
      const shards = shardNames.slice(0, yield* int(2, 4))
      const instances = yield* int(1, 3)
      const nodeOrders: Array<Array<string>> = []
      for (let i = 0; i < instances; i++) nodeOrders.push([...(yield* Random.shuffle(shards))])
      const flushIntervalMs = yield* pick([20, 50, 100, 250])
      const config: SimConfig = {
        seed,
        shards,
        instances,
        nodeOrders,
        polls: Array.from({ length: yield* int(2, 10) }, (_, i) => `p${i}`),
        options: optionNames.slice(0, yield* int(2, 5)),
        cacheTtlMs: yield* pick([50, 100, 250, 500, 1000]),
        flushIntervalMs,
        latency: { min: 0, max: yield* pick([0, 2, 5, 10, 30]) },
        errorRate: yield* pick([0, 0, 0.02, 0.1]),
        timeoutAfterApplyRate: yield* pick([0, 0, 0.02, 0.1]),
        journal: yield* chance(0.75),
        maxEntries: (yield* chance(0.5)) ? undefined : yield* int(4, 20),
        maxPollsPerBatch: (yield* chance(0.5)) ? undefined : yield* int(1, 3)
      }

      const count = options.events ?? 150
      const events: Array<SimEvent> = []
      for (let i = 0; i < count; i++) {
        const roll = yield* int(0, 99)
        if (roll < 40) {
          events.push(yield* drawVote(instances, config.polls, config.options))
        } else if (roll < 65) {
          events.push(yield* drawRead(instances, config.polls))
        } else if (roll < 83) {
          events.push(yield* drawWait(flushIntervalMs, 2500))
        } else if (roll < 88) {
          // The full stage writes to the shards only in batches; single votes stay in the buffer.
          const op = yield* pick<FakeRedis.Op>(["applyBatch", "applyBatch", "applyBatch", "results"])
          const fault = op === "results" ? "error" : yield* pick<FakeRedis.Fault>(["error", "timeoutAfterApply"])
          events.push({ _tag: "Fault", shard: yield* pick(shards), op, fault, count: yield* int(1, 3) })
        } else if (roll < 91) {
          events.push({ _tag: "ShardDown", shard: yield* pick(shards) })
        } else if (roll < 96) {
          events.push({ _tag: "ShardUp", shard: yield* pick(shards) })
        } else {
          events.push({ _tag: "Restart", instance: yield* int(0, instances - 1) })
        }
      }
      return { config, events }
    })
  )

// ---------------------------------------------------------------------------------------------------------------------
// Running

/** One running app process. */
interface Process extends Harness.App {
  /** Batch-id prefix: instance and incarnation. */
  readonly id: string
  /** Per poll, the highest count of each option this process has answered with so far. */
  readonly floors: Map<string, Record<string, number>>
}

/** An app instance: the processes that run it one after the other, and the journal they share. */
interface Slot {
  readonly index: number
  readonly journal: MemoryJournal.MemoryJournal | undefined
  incarnation: number
  up: boolean
  process: Process
}

export interface RunOptions {
  readonly trace?: boolean
}

export const describeEvent = (event: SimEvent): string => {
  switch (event._tag) {
    case "Vote":
    case "Read":
    case "Wait":
      return Harness.describeClientEvent(event)
    case "Restart":
      return `restart i${event.instance}`
    case "ShardDown":
      return `down    ${event.shard}`
    case "ShardUp":
      return `up      ${event.shard}`
    case "Fault":
      return `fault   ${event.shard} next ${event.count} ${event.op}: ${event.fault}`
  }
}

// Building a ring is pure, and at thousands of virtual nodes per node it costs more than a whole simulated run. So a
// router is built once per (variant, node order) and reused by every instance of every run with that order, its nodes
// forwarding to the shards of the run under way (runs execute one at a time).
const rings = new Map<string, Ring.Ring>()
const canonicalRing = (names: ReadonlyArray<string>) => {
  const key = names.join(",")
  let ring = rings.get(key)
  if (ring === undefined) rings.set(key, (ring = Ring.make(names)))
  return ring
}

const forwarding = (target: () => VoteStoreShape): VoteStoreShape => ({
  vote: (pollId, optionId) => Effect.suspend(() => target().vote(pollId, optionId)),
  voteOnce: (pollId, optionId, voterId) => Effect.suspend(() => target().voteOnce(pollId, optionId, voterId)),
  results: (pollId) => Effect.suspend(() => target().results(pollId)),
  exactResults: (pollId, batchIds) => Effect.suspend(() => target().exactResults(pollId, batchIds)),
  optionsOf: (pollIds) => Effect.suspend(() => target().optionsOf(pollIds)),
  applyBatch: (batch) => Effect.suspend(() => target().applyBatch(batch)),
  partitionOf: (pollId) => target().partitionOf(pollId),
  health: Effect.suspend(() => target().health)
})

const routers = new Map<string, { readonly router: VoteStoreShape; readonly targets: Map<string, VoteStoreShape> }>()
const routerFor = (variant: Variant, order: ReadonlyArray<string>, shardStore: (name: string) => VoteStoreShape) => {
  const key = `${variant.name}\n${order.join(",")}`
  let entry = routers.get(key)
  if (entry === undefined) {
    const targets = new Map<string, VoteStoreShape>()
    const router = variant.route(order.map((name) => ({ name, store: forwarding(() => targets.get(name)!) })))
    routers.set(key, (entry = { router, targets }))
  }
  for (const name of order) entry.targets.set(name, shardStore(name))
  return entry.router
}

export const run = (scenario: Scenario, variant: Variant = real, options: RunOptions = {}): Outcome => {
  const { config, events } = scenario
  const recorder = new Harness.Recorder(INVARIANTS, options.trace ?? false)
  const { tick, note, fail, check, violations } = recorder
  const stats: SimStats = {
    events: events.length,
    votes: 0,
    votesAccepted: 0,
    votesRefused: 0,
    reads: 0,
    readsFailed: 0,
    restarts: 0,
    outages: 0,
    faults: 0,
    storeCalls: 0,
    batchesApplied: 0,
    retriesAbsorbed: 0,
    timeoutsAfterApply: 0,
    checks: recorder.checks
  }
  const now = () => recorder.now()

  const ring = canonicalRing(config.shards)
  const shards = new Map(
    config.shards.map((name) => [
      name,
      FakeRedis.make({
        name,
        random: Random.make(`${config.seed}/${name}`),
        latency: config.latency,
        error: config.errorRate,
        timeoutAfterApply: config.timeoutAfterApplyRate,
        stamp: tick
      })
    ])
  )
  /** Each vote belongs to its instance or its process: see `ownerOfSlot`. */
  const ballots = new Harness.Ballots<string>(tick)
  const votesOf = ballots.of
  /** Votes an incarnation could not write out on shutdown, as it reported them; only without a journal. */
  let reportedLeft = 0

  // With a journal an instance's buffer outlives its process, so votes belong to the instance; without one they
  // belong to the process (incarnation) that accepted them.
  const ownerOfSlot = (slot: Slot) => (config.journal ? `i${slot.index}` : slot.process.id)
  const ownerOfBatch = (batchId: string | undefined) => {
    if (batchId === undefined) return "direct"
    const [instance, incarnation] = batchId.split("-")
    return config.journal ? instance! : `${instance}-${incarnation}`
  }

  const storedTotals = () => {
    const totals = new Map<string, Map<string, number>>()
    for (const shard of shards.values()) {
      for (const [poll, counts] of shard.polls()) {
        let target = totals.get(poll)
        if (target === undefined) totals.set(poll, (target = new Map()))
        for (const [option, n] of counts) target.set(option, (target.get(option) ?? 0) + n)
      }
    }
    return totals
  }

  const homes = new Map(config.polls.map((poll) => [poll, Ring.nodeFor(ring, poll)]))

  const checkStep = () => {
    for (const poll of config.polls) {
      const holders = [...shards.values()].filter((s) => s.polls().has(poll as PollId)).map((s) => s.name)
      const home = homes.get(poll)!
      check(
        "placement",
        holders.length === 0 || (holders.length === 1 && holders[0] === home),
        () => `poll ${poll} is stored on [${holders.join(", ")}]; the ring puts it on ${home}`
      )
    }
    for (const [poll, counts] of storedTotals()) {
      for (const [option, stored] of counts) {
        const possible = votesOf(poll).filter((v) => v.option === option && v.ok !== false).length
        check(
          "doubled",
          stored <= possible,
          () => `the store holds ${stored} votes for ${poll}/${option}, but only ${possible} were accepted`
        )
      }
    }
  }

  const checkRead = (
    slot: Slot,
    owner: string,
    poll: string,
    start: number,
    end: number,
    endMs: number,
    counts: Readonly<Record<string, number>>,
    floor: Readonly<Record<string, number>>
  ) => {
    const ownVotes = votesOf(poll).filter((v) => v.owner === owner)
    const applied = [...shards.values()].flatMap((s) => s.log.filter((c) => c.pollId === poll))
    const others = applied.filter((c) => ownerOfBatch(c.batchId) !== owner)
    // A cached snapshot may be read up to the TTL after it arrived, and it arrived up to one response latency
    // after the store produced it.
    const freshAfter = endMs - config.cacheTtlMs - config.latency.max
    for (const option of new Set([...Object.keys(counts), ...config.options])) {
      const got = counts[option] ?? 0
      const ownLow = ownVotes.filter((v) => v.option === option && v.ok === true && v.end! < start).length
      const ownHigh = ownVotes.filter((v) => v.option === option && v.ok !== false && v.start < end).length
      const othersLow = others.filter((c) => c.optionId === option && c.at < freshAfter).reduce((n, c) => n + c.n, 0)
      const othersHigh = others.filter((c) => c.optionId === option && c.seq < end).reduce((n, c) => n + c.n, 0)
      const where = `i${slot.index} read ${poll}/${option} = ${got}`
      check(
        "read-too-low",
        got >= ownLow + othersLow,
        () =>
          `${where}, but this instance had accepted ${ownLow} and other instances' votes stored before ` +
          `${freshAfter}ms (TTL ${config.cacheTtlMs}ms ago) were ${othersLow}`
      )
      check(
        "read-too-high",
        got <= ownHigh + othersHigh,
        () =>
          `${where}, but this instance had accepted at most ${ownHigh} and the store held ${othersHigh} ` +
          `from other instances`
      )
      check(
        "monotonic",
        got >= (floor[option] ?? 0),
        () => `${where}, after this instance had already answered ${floor[option]}`
      )
    }
    const floors = slot.process.floors.get(poll) ?? {}
    for (const [option, n] of Object.entries(counts)) floors[option] = Math.max(floors[option] ?? 0, n)
    slot.process.floors.set(poll, floors)
  }

  const launch = (index: number, incarnation: number, journal: MemoryJournal.MemoryJournal | undefined) =>
    Effect.gen(function* () {
      const id = `i${index}-r${incarnation}`
      const scope = yield* Scope.make()
      const router = routerFor(variant, config.nodeOrders[index]!, (name) => variant.shard(shards.get(name)!.store))
      const store = yield* Effect.gen(function* () {
        const cached = yield* variant.cache(router, { ttl: Duration.millis(config.cacheTtlMs) })
        return yield* WriteBehind.make(
          variant.beneathBuffer(cached),
          {
            flushInterval: Duration.millis(config.flushIntervalMs),
            instanceId: id,
            // On virtual time: a first vote's options read goes out at once, not after a real turn of the loop.
            gatherReads: (read) => read(),
            ...(config.maxEntries === undefined ? {} : { maxEntries: config.maxEntries }),
            ...(config.maxPollsPerBatch === undefined ? {} : { maxPollsPerBatch: config.maxPollsPerBatch })
          },
          journal?.journal ?? Journal.none
        )
      }).pipe(Scope.extend(scope))
      note(`i${index} started as ${id}`)
      const process: Process = { id, scope, store, requests: [], floors: new Map() }
      return process
    })

  const start = (slot: Slot) =>
    Effect.gen(function* () {
      slot.process = yield* launch(slot.index, slot.incarnation, slot.journal)
      slot.up = true
    })

  /** Graceful stop: out of rotation, requests drained, scope closed (the buffer's final flush). */
  const stop = (slot: Slot) =>
    Effect.gen(function* () {
      slot.up = false
      const { id, requests, scope, store } = slot.process
      yield* Fiber.awaitAll(requests)
      yield* Scope.close(scope, Exit.void)
      // The buffer's own account of what its final flush could not write.
      const left = (yield* store.health).pendingVotes
      if (!config.journal) reportedLeft += left
      note(`i${slot.index} (${id}) stopped; ${left} votes left ${config.journal ? "in its journal" : "unwritten"}`)
      slot.incarnation++
    })

  const background: Array<Fiber.RuntimeFiber<void>> = []

  const request = <A>(slot: Slot, effect: Effect.Effect<A, unknown>, done: (exit: Exit.Exit<A, unknown>) => void) =>
    Harness.request(
      recorder,
      slot.index,
      () => slot.process.requests,
      effect,
      (exit) => {
        if (Harness.isDefect(exit)) fail("crash", `request on i${slot.index} died: ${Cause.pretty(exit.cause)}`)
      },
      done
    )

  const perform = (event: SimEvent, slots: ReadonlyArray<Slot>): Effect.Effect<void> => {
    switch (event._tag) {
      case "Vote": {
        const slot = slots[event.instance]!
        stats.votes++
        if (!slot.up) {
          stats.votesRefused++
          note(`i${event.instance} vote ${event.poll} ${event.option}: instance restarting, not sent`)
          return Effect.void
        }
        return ballots.cast(event, ownerOfSlot(slot), stats, note, (done) =>
          request(slot, slot.process.store.vote(event.poll as PollId, event.option as OptionId), done)
        )
      }
      case "Read": {
        const slot = slots[event.instance]!
        stats.reads++
        if (!slot.up) {
          stats.readsFailed++
          return Effect.void
        }
        const owner = ownerOfSlot(slot)
        const begin = tick()
        const floor = { ...slot.process.floors.get(event.poll) }
        return request(slot, slot.process.store.results(event.poll as PollId), (exit) => {
          const end = tick()
          if (Exit.isFailure(exit)) {
            stats.readsFailed++
            note(`i${event.instance} read ${event.poll}: ${Cause.squash(exit.cause)}`)
            return
          }
          note(
            `i${event.instance} read ${event.poll}: ${Harness.describeCounts(exit.value.counts)} via ${exit.value.servedVia}`
          )
          checkRead(slot, owner, event.poll, begin, end, now(), exit.value.counts, floor)
        })
      }
      case "Wait":
        return Effect.sleep(Duration.millis(event.ms))
      case "Restart": {
        const slot = slots[event.instance]!
        if (!slot.up) return Effect.void
        // Out of rotation at once: a second restart or a new request must not reach the stopping process.
        slot.up = false
        stats.restarts++
        note(`i${event.instance} restart requested`)
        return Effect.flatMap(Effect.fork(Effect.zipRight(stop(slot), start(slot))), (fiber) =>
          Effect.sync(() => void background.push(fiber))
        )
      }
      case "ShardDown":
        return Effect.sync(() => {
          const shard = shards.get(event.shard)!
          if (shard.isUp()) stats.outages++
          shard.down()
          note(`${event.shard} down`)
        })
      case "ShardUp":
        return Effect.sync(() => {
          shards.get(event.shard)!.up()
          note(`${event.shard} up`)
        })
      case "Fault":
        return Effect.sync(() => {
          stats.faults++
          shards.get(event.shard)!.script(event.op, ...Array.from({ length: event.count }, () => event.fault))
        })
    }
  }

  const program = Effect.gen(function* () {
    const clock = yield* Effect.clock
    recorder.now = () => clock.unsafeCurrentTimeMillis()
    const slots: Array<Slot> = []
    for (let index = 0; index < config.instances; index++) {
      const journal = config.journal ? MemoryJournal.make() : undefined
      slots.push({ index, journal, incarnation: 0, up: true, process: yield* launch(index, 0, journal) })
    }

    for (recorder.step = 0; recorder.step < events.length && violations.length === 0; recorder.step++) {
      yield* perform(events[recorder.step]!, slots)
      checkStep()
    }
    if (violations.length > 0) return

    // The end: every fault healed, everything in flight answered, then every instance stopped cleanly.
    recorder.step = -1
    note("healing every shard")
    for (const shard of shards.values()) {
      shard.up()
      shard.clearScript()
      shard.setRates({ error: 0, timeoutAfterApply: 0 })
    }
    yield* Fiber.awaitAll(background)
    for (const slot of slots) yield* Fiber.awaitAll(slot.process.requests)
    yield* Effect.sleep(Duration.millis(Math.max(3 * config.flushIntervalMs, 2 * COMMAND_TIMEOUT_MS)))
    for (const slot of slots) yield* stop(slot)
    checkStep()

    const stored = storedTotals()
    let accepted = 0
    let storedSum = 0
    for (const poll of config.polls) {
      for (const option of config.options) {
        const want = votesOf(poll).filter((v) => v.option === option && v.ok === true).length
        const have = stored.get(poll)?.get(option) ?? 0
        accepted += want
        storedSum += have
        if (config.journal) {
          check(
            have < want ? "lost" : "doubled",
            have === want,
            () => `after shutdown the store holds ${have} votes for ${poll}/${option}; ${want} were accepted`
          )
        } else {
          check("doubled", have <= want, () => `the store holds ${have} votes for ${poll}/${option}; ${want} accepted`)
        }
      }
    }
    if (config.journal) {
      for (const slot of slots) {
        const left = slot.journal!.votes()
        check(
          "lost",
          left === 0,
          () => `after a clean shutdown the journal of i${slot.index} still holds ${left} votes`
        )
      }
    } else {
      check(
        "lost",
        storedSum + reportedLeft >= accepted,
        () =>
          `${accepted} votes accepted, ${storedSum} stored, and the instances reported only ${reportedLeft} ` +
          `left unwritten on shutdown`
      )
    }
  }).pipe(Effect.provide(Harness.logsToTrace(note)))

  const result = Harness.runVirtual(program, events)
  if (Exit.isFailure(result.exit)) fail("crash", Cause.pretty(result.exit.cause))
  for (const shard of shards.values()) {
    stats.storeCalls += shard.stats.calls
    stats.batchesApplied += shard.stats.batchesApplied
    stats.retriesAbsorbed += shard.stats.batchesIgnored
    stats.timeoutsAfterApply += shard.stats.timeoutsAfterApply
  }
  return Harness.outcome(scenario, variant.name, recorder, stats, result)
}

// ---------------------------------------------------------------------------------------------------------------------
// Shrinking and reporting

export interface ShrinkOptions {
  /** Most runs to spend on shrinking. */
  readonly budget?: number
}

export interface Shrunk {
  readonly scenario: Scenario
  readonly outcome: Outcome
  readonly runs: number
}

/**
 * Delta debugging over the event list (drop halves, then quarters, ... then single events), then a simpler
 * configuration (no random faults, no latency, default buffer sizes) where the failure survives it. A candidate is kept
 * only if it breaks the same invariant, so shrinking cannot wander off to a different failure.
 */
export const shrink = (failing: Outcome, variant: Variant = real, options: ShrinkOptions = {}): Shrunk => {
  const invariant = failing.violation?.invariant
  if (invariant === undefined) throw new Error("shrink needs a failing outcome")
  const budget = options.budget ?? 2000
  let runs = 0
  let best = failing
  const attempt = (scenario: Scenario) => {
    if (runs >= budget) return false
    runs++
    const outcome = run(scenario, variant)
    if (outcome.violation?.invariant !== invariant) return false
    best = outcome
    return true
  }

  const dropEvents = () =>
    Harness.dropWhileKept(
      best.scenario.events,
      (events) => attempt({ config: best.scenario.config, events }),
      () => runs >= budget
    )

  const simplerConfigs = (config: SimConfig): Array<Partial<SimConfig>> => [
    { errorRate: 0, timeoutAfterApplyRate: 0 },
    { errorRate: 0 },
    { timeoutAfterApplyRate: 0 },
    { latency: { min: 0, max: 0 } },
    { maxEntries: undefined },
    { maxPollsPerBatch: undefined },
    ...(config.journal ? [{ journal: false }] : [])
  ]

  const shorterWaits = () => {
    for (let i = 0; i < best.scenario.events.length; i++) {
      const event = best.scenario.events[i]!
      if (event._tag !== "Wait" || event.ms <= 1) continue
      for (const ms of [1, Math.floor(event.ms / 2)]) {
        const events = best.scenario.events.map((e, j) => (j === i ? { _tag: "Wait" as const, ms } : e))
        if (attempt({ config: best.scenario.config, events })) break
      }
    }
  }

  dropEvents()
  for (const change of simplerConfigs(best.scenario.config)) {
    attempt({ config: { ...best.scenario.config, ...change }, events: best.scenario.events })
  }
  shorterWaits()
  dropEvents()
  return { scenario: best.scenario, outcome: run(best.scenario, variant, { trace: true }), runs }
}

export const formatScenario = (scenario: Scenario): string => {
  const c = scenario.config
  const lines = [
    `  config: shards=[${c.shards.join(",")}] instances=${c.instances} ` +
      `orders=${c.nodeOrders.map((o) => `[${o.join(",")}]`).join(" ")}`,
    `          polls=${c.polls.length} options=${c.options.length} ttl=${c.cacheTtlMs}ms flush=${c.flushIntervalMs}ms ` +
      `latency=${c.latency.min}-${c.latency.max}ms errors=${c.errorRate} lostAnswers=${c.timeoutAfterApplyRate} ` +
      `journal=${c.journal} maxEntries=${c.maxEntries ?? "default"} maxPollsPerBatch=${c.maxPollsPerBatch ?? "default"}`,
    ...Harness.formatEvents(scenario.events, describeEvent)
  ]
  return lines.join("\n")
}

/** The command that regenerates and reruns the scenario of an outcome (of the real layers). */
export const reproduce = (outcome: Outcome) =>
  `SIM_SEED=${outcome.scenario.config.seed} SIM_RUNS=1 SIM_EVENTS=${outcome.scenario.events.length} npm run sim`

export const formatFailure = (original: Outcome, shrunk: Shrunk): string => {
  const v = shrunk.outcome.violation ?? original.violation!
  return [
    `FAILED seed=${original.scenario.config.seed} variant=${original.variant}`,
    ...Harness.formatViolation(
      v,
      INVARIANTS,
      `; shrunk from ${original.scenario.events.length} to ${shrunk.scenario.events.length} events in ${shrunk.runs} runs`
    ),
    formatScenario(shrunk.scenario),
    `  trace of the shrunk run:`,
    ...Harness.traceTail(shrunk.outcome.trace),
    `  reproduce: ${reproduce(original)}`,
    ...Harness.replayLines("replay the shrunk events", shrunk.scenario)
  ].join("\n")
}
