import { Cause, Effect, Exit } from "effect"
import { describe, expect, it } from "vitest"
import { SLOTS, slotOf } from "../src/RedisClient/Cluster.js"
import { partitionOf, type StoreClients } from "../src/VoteStore/Cluster.js"
import { countsKey } from "../src/VoteStore/Redis.js"
import type { ClusterEvent, ClusterSimConfig, Outcome, Scenario } from "./ClusterSim.js"
import * as ClusterSim from "./ClusterSim.js"
import * as FakeCluster from "./FakeCluster.js"
import * as VirtualTime from "./VirtualTime.js"

/**
 * The `cluster` stage's buffer, cache and store over the fake cluster: across failovers, slot migrations and lost
 * answers no accepted vote is lost or doubled while the store waits for a replica, and without that wait the same
 * scenarios lose votes.
 */

const SEEDS = Array.from({ length: 12 }, (_, i) => i + 1)
/** Where the broken builds are looked for: the search stops at the first seed that catches them. */
const SEARCH = Array.from({ length: 40 }, (_, i) => i + 1)

const summary = (outcome: Outcome) => outcome.violations.map((v) => `${v.invariant}: ${v.message}`).join("\n")

/** A plain cluster for hand-written scenarios: no random faults, fixed latencies. */
const config = (overrides: Partial<ClusterSimConfig> = {}): ClusterSimConfig => ({
  seed: 1,
  masters: 3,
  instances: 1,
  polls: ["p0"],
  options: ["A"],
  cacheTtlMs: 100,
  flushIntervalMs: 100,
  latency: { min: 1, max: 1 },
  lag: { min: 2, max: 2 },
  failoverMs: 200,
  syncMs: 20,
  errorRate: 0,
  lostAnswerRate: 0,
  maxPollsPerBatch: undefined,
  waitReplicas: 1,
  ...overrides
})

const votes = (poll: string, n: number, option = "A"): Array<ClusterEvent> =>
  Array.from({ length: n }, () => ({ _tag: "Vote" as const, instance: 0, poll, option }))

/** Past the buffer's first flush, which goes out as the instance starts. */
const settled: ClusterEvent = { _tag: "Wait", ms: 10 }

/** The first poll ids (`q0`, `q1`, ...) that satisfy `test`. */
const pollsWhere = (count: number, test: (pollId: string) => boolean) => {
  const found: Array<string> = []
  for (let i = 0; found.length < count; i++) if (test(`q${i}`)) found.push(`q${i}`)
  return found
}

/** The first seed that loses votes without WAIT, looked for once. */
let withoutWait: Outcome | undefined
const lostWithoutWait = () =>
  (withoutWait ??= ClusterSim.firstViolation(SEARCH, { waitReplicas: 0, invariants: ["lost"] }))

describe("the cluster simulation", () => {
  it(`loses and doubles no vote over ${SEEDS.length} seeds of failovers, migrations and lost answers (WAIT 1)`, () => {
    const totals = { votes: 0, kills: 0, promotions: 0, lostWrites: 0, moved: 0, repeated: 0, migrations: 0 }
    for (const seed of SEEDS) {
      const outcome = ClusterSim.run(ClusterSim.generate(seed, { waitReplicas: 1 }))
      expect(outcome.violation, `seed ${seed}:\n${summary(outcome)}`).toBeUndefined()
      const cluster = outcome.stats.cluster!
      totals.votes += outcome.stats.votesAccepted
      totals.kills += outcome.stats.kills
      totals.promotions += cluster.promotions
      totals.lostWrites += cluster.lostWrites
      totals.moved += cluster.moved
      totals.repeated += cluster.partsRepeated
      totals.migrations += cluster.migrations
    }
    // The runs did go through what the property is about: replicas promoted without some of their master's writes,
    // parts redirected, and parts sent again after they had been applied.
    expect(totals.promotions, JSON.stringify(totals)).toBeGreaterThan(0)
    expect(totals.lostWrites, JSON.stringify(totals)).toBeGreaterThan(0)
    expect(totals.moved, JSON.stringify(totals)).toBeGreaterThan(0)
    expect(totals.repeated, JSON.stringify(totals)).toBeGreaterThan(0)
    console.log(`cluster simulation, ${SEEDS.length} seeds: ${JSON.stringify(totals)}`)
  })

  it("loses accepted votes across failovers when it does not wait for a replica (WAIT 0)", () => {
    const caught = lostWithoutWait()
    expect(caught, `no seed of ${SEARCH.length} lost a vote without WAIT`).toBeDefined()
    const lost = caught!.violations.find((v) => v.invariant === "lost")!
    console.log(`without WAIT, seed ${caught!.scenario.config.seed} lost votes: ${lost.message}`)
    expect(caught!.stats.cluster!.lostWrites).toBeGreaterThan(0)
    // Control: the same run with the wait loses nothing.
    const control = ClusterSim.run({ ...caught!.scenario, config: { ...caught!.scenario.config, waitReplicas: 1 } })
    expect(control.violation, summary(control)).toBeUndefined()
  })

  it("decides on WAIT 1 by itself when every master has a replica (REDIS_WAIT_REPLICAS unset)", () => {
    const caught = lostWithoutWait()!
    const auto = ClusterSim.run(
      { ...caught.scenario, config: { ...caught.scenario.config, waitReplicas: "auto" } },
      ClusterSim.real,
      { trace: true }
    )
    expect(auto.violation, summary(auto)).toBeUndefined()
    expect(auto.trace.some((line) => line.includes("confirmed once 1 replica(s) hold it"))).toBe(true)
  })

  it("doubles votes over the same kind of seeds when a batch part's marker has no NX", () => {
    const caught = ClusterSim.firstViolation(SEARCH, {
      variant: ClusterSim.withoutMarkerNx,
      invariants: ["doubled"]
    })
    expect(caught, `no seed of ${SEARCH.length} doubled a vote without the NX`).toBeDefined()
    console.log(`without NX, seed ${caught!.scenario.config.seed}: ${caught!.violation!.message}`)
    expect(ClusterSim.run(caught!.scenario).violation).toBeUndefined()
  })
})

describe("a batch part's marker", () => {
  /** Three votes on `p0`, the answer to the first batch part lost, then `then`. */
  const answerLost = (...then: Array<ClusterEvent>): Scenario => ({
    config: config(),
    events: [settled, ...votes("p0", 3), { _tag: "Fault", op: "parts", fault: "lostAnswer", count: 1 }, ...then]
  })
  const cases: Array<[string, Scenario, (outcome: Outcome) => void]> = [
    [
      "a retry after a lost answer",
      answerLost({ _tag: "Wait", ms: 3000 }),
      (outcome) => expect(outcome.stats.cluster!.lostAnswers).toBe(1)
    ],
    [
      "a retry after a lost answer and MOVED (its slot migrated meanwhile)",
      // The first flush (at 100 ms) is applied and its answer lost; the slot moves before the retry.
      answerLost({ _tag: "Wait", ms: 200 }, { _tag: "Migrate", poll: "p0", to: 0 }, { _tag: "Wait", ms: 3000 }),
      (outcome) => expect(outcome.stats.cluster!.moved).toBeGreaterThan(0)
    ],
    (() => {
      // Two polls in one batch (one slot group), on one master, one of them migrated before the batch goes out: the
      // part for the other one is applied, the migrated one's is MOVED, and the retry sends both.
      const [stays, moves] = pollsWhere(2, (id) => partitionOf(id) === "slot-group-0")
      return [
        "a retry after one part of the batch was MOVED",
        {
          config: config({ polls: [stays!, moves!] }),
          events: [
            settled,
            ...votes(stays!, 2),
            ...votes(moves!, 3),
            { _tag: "Migrate", poll: moves!, to: 0 },
            { _tag: "Wait", ms: 3000 }
          ]
        },
        (outcome) => expect(outcome.stats.cluster!.moved).toBeGreaterThan(0)
      ] as [string, Scenario, (outcome: Outcome) => void]
    })()
  ]

  it.each(cases)("makes %s count once, and the part without NX counts twice", (_, scenario, exercised) => {
    const outcome = ClusterSim.run(scenario)
    expect(outcome.violation, summary(outcome)).toBeUndefined()
    exercised(outcome)
    expect(outcome.stats.cluster!.partsRepeated).toBeGreaterThan(0)
    const broken = ClusterSim.run(scenario, ClusterSim.withoutMarkerNx)
    expect(broken.violations.map((v) => v.invariant)).toContain("doubled")
  })
})

describe("what WAIT cannot cover", () => {
  // Two masters: the poll starts on the first (its slot is in the lower half) and migrates to the second.
  const [poll] = pollsWhere(1, (id) => slotOf(id) < SLOTS / 2)
  const scenario: Scenario = {
    config: config({ masters: 2, polls: [poll!], lag: { min: 50, max: 50 } }),
    events: [
      ...votes(poll!, 3),
      { _tag: "Wait", ms: 500 },
      { _tag: "Migrate", poll: poll!, to: 0 },
      { _tag: "KillMaster", master: 1 },
      { _tag: "Wait", ms: 2000 }
    ]
  }

  it("a slot migrated into a master that dies before its replica holds the slot's keys is lost, WAIT or not", () => {
    const outcome = ClusterSim.run(scenario, ClusterSim.real, { killWhileMigrating: true })
    expect(outcome.violations.map((v) => v.invariant)).toContain("lost")
    // The scenarios of the other tests kill a master only once its replica holds what migrated into it.
    expect(ClusterSim.run(scenario).violation).toBeUndefined()
  })
})

describe("the fake cluster", () => {
  /** Runs `body` on virtual time over a fresh fake cluster (two masters, a replica each) and one instance's clients. */
  const onFake = (
    options: Partial<FakeCluster.FakeClusterOptions>,
    body: (cluster: FakeCluster.FakeCluster, clients: StoreClients) => Effect.Effect<void, unknown>
  ) => {
    const { exit } = VirtualTime.run(
      Effect.flatMap(
        FakeCluster.make({
          masters: 2,
          seed: 1,
          latency: { min: 1, max: 1 },
          lag: { min: 100, max: 100 },
          failoverMs: 200,
          syncMs: 20,
          ...options
        }),
        (cluster) => body(cluster, cluster.clients("test"))
      )
    )
    if (Exit.isFailure(exit)) throw new Error(Cause.pretty(exit.cause))
  }
  const poll = "q0"
  const slot = slotOf(poll)
  const counts = countsKey(poll)
  const marker = (batch: string) => `poll:{${poll}}:batch:${batch}`

  it("answers WAIT with the replicas that hold the connection's last write; a failover before it arrives loses it", () =>
    onFake({}, (cluster, { call, flusher }) =>
      Effect.gen(function* () {
        const apply = (batch: string, n: number, waitMs: number) =>
          call("apply", () =>
            flusher.batchPipeline().livepollApplyPart(marker(batch), counts, 60, "A", n).wait(1, waitMs).exec()
          )
        // The replica is 100 ms behind: a WAIT of 50 ms finds none, a repeat (it renews the marker) waits for it.
        expect(yield* apply("b1", 2, 50)).toEqual([
          [null, 1],
          [null, 0]
        ])
        expect(yield* apply("b1", 2, 500)).toEqual([
          [null, 0],
          [null, 1]
        ])
        expect(cluster.counts(poll)).toEqual({ A: 2 })
        yield* call("apply", () => flusher.batchPipeline().livepollApplyPart(marker("b2"), counts, 60, "A", 5).exec())
        expect(cluster.counts(poll)).toEqual({ A: 7 })
        const master = cluster.ownerOf(slot)
        cluster.kill(master)
        yield* Effect.sleep(300)
        expect(cluster.ownerOf(slot)).not.toBe(master)
        expect(cluster.counts(poll)).toEqual({ A: 2 })
        expect(cluster.stats.lostWrites).toBe(1)
        cluster.rejoin(master)
        yield* Effect.sleep(50)
        expect(cluster.nodes().find((node) => node.key === master)).toMatchObject({ role: "replica", synced: true })
      })
    ))

  it("redirects a command for a migrated slot with MOVED, which a command follows and a batch pipeline reports", () =>
    onFake({ lag: { min: 1, max: 1 } }, (cluster, { call, client, flusher }) =>
      Effect.gen(function* () {
        yield* call("apply", () => flusher.batchPipeline().livepollApplyPart(marker("b1"), counts, 60, "A", 1).exec())
        const from = cluster.ownerOf(slot)
        const to = cluster.masters().find((key) => key !== from)!
        expect(cluster.migrate(slot, to)).toBe(true)
        expect(yield* call("read", () => client.hgetall(counts))).toEqual({ A: "1" })
        expect(cluster.stats.moved).toBe(1)
        const replies = yield* call("apply", () =>
          flusher.batchPipeline().livepollApplyPart(marker("b2"), counts, 60, "A", 1).wait(1, 100).exec()
        )
        expect(replies![0]![0]?.message).toBe(`MOVED ${slot} ${to}`)
        // A pipeline that was partly redirected leaves the client's map as it was (the store refreshes it).
        expect(flusher.slots[slot]![0]).toBe(from)
        flusher.refreshSlotsCache()
        yield* Effect.sleep(10)
        expect(flusher.slots[slot]![0]).toBe(to)
      })
    ))

  it("keeps a master's slots and data while it is down without a replica to take over, until it is back", () =>
    onFake({}, (cluster, { call, client, flusher }) =>
      Effect.gen(function* () {
        yield* call("apply", () => flusher.batchPipeline().livepollApplyPart(marker("b1"), counts, 60, "A", 3).exec())
        const master = cluster.ownerOf(slot)
        const replica = cluster.nodes().find((node) => node.master === master)!.key
        cluster.kill(replica)
        cluster.kill(master)
        const read = yield* Effect.either(call("read", () => client.hgetall(counts)))
        expect(read._tag).toBe("Left")
        yield* Effect.sleep(1000)
        expect(cluster.ownerOf(slot)).toBe(master)
        expect(cluster.stats.noHeir).toBe(1)
        cluster.rejoin(master)
        expect(yield* call("read", () => client.hgetall(counts))).toEqual({ A: "3" })
      })
    ))
})
