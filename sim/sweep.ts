/**
 * `npm run sim`: the long sweep. Prints the ring table, runs the properties at a high count, then runs the cluster
 * simulation over SIM_RUNS consecutive seeds from SIM_SEED, and the Redis Cluster simulation (sim/ClusterSim.ts) over
 * a quarter as many. Exits 1 on the first failure, after printing the seed and the shrunk counterexample.
 *
 *   SIM_RUNS    simulation runs (default 200); the properties run as many cases, the Redis Cluster one a quarter
 *   SIM_SEED    first seed (default: drawn from the time, and printed)
 *   SIM_EVENTS  events per simulated scenario (default 150)
 *   SIM_REPLAY  a file holding a scenario as JSON (the last line of a failure report): run just that, with a trace
 */
import * as fs from "node:fs"
import * as Ring from "../src/Ring.js"
import * as ClusterSim from "./ClusterSim.js"
import type * as Harness from "./Harness.js"
import * as Properties from "./properties.js"
import * as RingStats from "./RingStats.js"
import * as Simulation from "./Simulation.js"

const intFromEnv = (name: string, fallback: number) => {
  const raw = process.env[name]
  if (raw === undefined || raw === "") return fallback
  const n = Number(raw)
  if (!Number.isSafeInteger(n) || n < 0) {
    console.error(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`)
    process.exit(2)
  }
  return n
}

const runs = intFromEnv("SIM_RUNS", 200)
const seed = intFromEnv("SIM_SEED", Date.now() % 1_000_000_000)
const eventsPerRun = intFromEnv("SIM_EVENTS", 150)
const started = performance.now()

const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: ReadonlyArray<string>) => `| ${cells.map((c, i) => c.padStart(widths[i]!)).join(" | ")} |`
  return [line(header), `|${widths.map((w) => "-".repeat(w + 1) + ":").join("|")}|`, ...rows.map(line)].join("\n")
}

const replay = () => {
  const file = process.env.SIM_REPLAY!
  const scenario = JSON.parse(fs.readFileSync(file, "utf8").trim().split("\n").at(-1)!) as Simulation.Scenario
  if ("masters" in scenario.config) {
    const cluster = scenario as unknown as ClusterSim.Scenario
    return printReplay(ClusterSim.formatScenario(cluster), ClusterSim.run(cluster, ClusterSim.real, { trace: true }))
  }
  printReplay(Simulation.formatScenario(scenario), Simulation.run(scenario, Simulation.real, { trace: true }))
}

/** Adds each of `amounts` to its total. */
const addUp = <K extends string>(totals: Record<K, number>, amounts: Readonly<Record<K, number>>) => {
  for (const key of Object.keys(amounts) as Array<K>) totals[key] += amounts[key]
}

/** A replayed scenario and its trace; exits 1 if the run broke an invariant. */
const printReplay = (
  scenario: string,
  outcome: { readonly trace: ReadonlyArray<string>; readonly violation: Harness.Violation<string> | undefined }
) => {
  console.log(scenario)
  for (const line of outcome.trace) console.log(`    ${line}`)
  if (outcome.violation !== undefined) {
    console.log(`FAILED ${outcome.violation.invariant}: ${outcome.violation.message}`)
    process.exit(1)
  }
  console.log("passed")
}

/**
 * Runs `count` seeds from SIM_SEED, a line each (`describe`), adding up each outcome (`add`); at the first that breaks
 * an invariant prints `report` of it, shrunk, and exits 1.
 */
const sweepSeeds = <O extends { readonly violation: Harness.Violation<string> | undefined }>(
  count: number,
  runSeed: (seed: number) => O,
  describe: (outcome: O) => string,
  report: (outcome: O, seed: number) => string,
  add: (outcome: O) => void
) => {
  for (let i = 0; i < count; i++) {
    const outcome = runSeed(seed + i)
    console.log(
      `seed ${seed + i}: ${describe(outcome)}: ` +
        (outcome.violation === undefined ? "ok" : `FAILED ${outcome.violation.invariant}`)
    )
    if (outcome.violation !== undefined) {
      console.log(`\nshrinking seed ${seed + i} ...`)
      console.log(report(outcome, seed + i))
      process.exit(1)
    }
    add(outcome)
  }
}

const ringSection = () => {
  const v = Ring.DEFAULT_VIRTUAL_NODES
  console.log(`\n## Ring (default node names redis_7000.., ${v} virtual nodes per node)\n`)
  const rows = RingStats.range(2, 16).map((n) => {
    const r = RingStats.row(n, v)
    const ring = Ring.make(RingStats.defaultNames(n), v)
    // 100,000 random poll ids: the largest deviation from the exact share, in standard deviations.
    const count = 100_000
    const observed = RingStats.sample(ring, count, seed + n)
    let z = 0
    for (const [node, share] of Ring.ownership(ring)) {
      z = Math.max(z, Math.abs(observed.get(node)! - count * share) / Math.sqrt(count * share * (1 - share)))
    }
    return [
      String(n),
      String(v),
      r.maxOverMean.toFixed(4),
      r.movedOnAdd.toFixed(4),
      r.idealOnAdd.toFixed(4),
      (r.movedOnAdd / r.idealOnAdd).toFixed(3),
      z.toFixed(2),
      `${(RingStats.memoryBytes(ring) / 1024).toFixed(0)} KiB`
    ]
  })
  console.log(
    table(
      [
        "nodes",
        "virtual nodes",
        "max/mean",
        "moved on add",
        "ideal 1/(n+1)",
        "moved/ideal",
        "sample max |z|",
        "memory"
      ],
      rows
    )
  )
  const worst = rows.reduce((a, b) => (Number(b[2]) > Number(a[2]) ? b : a))
  const balanced = Number(worst[2]) <= 1.05
  console.log(`\nworst max/mean ${worst[2]} at ${worst[0]} nodes: ${balanced ? "within" : "ABOVE"} 1.05`)

  const big = Ring.make(RingStats.defaultNames(16), v)
  const buildStart = performance.now()
  for (let i = 0; i < 5; i++) Ring.make(RingStats.defaultNames(16), v)
  const buildMs = (performance.now() - buildStart) / 5
  const ids = Array.from({ length: 200_000 }, (_, i) => `poll-${i}`)
  const owners = new Set<string>()
  const lookupStart = performance.now()
  for (const id of ids) owners.add(Ring.nodeFor(big, id))
  const lookupNs = ((performance.now() - lookupStart) * 1e6) / ids.length
  console.log(
    `cost at 16 nodes: ${big.points.length} points, ${(RingStats.memoryBytes(big) / 1024).toFixed(0)} KiB ` +
      `(4-byte point + 2-byte owner each), built in ${buildMs.toFixed(1)} ms, ` +
      `lookup ${lookupNs.toFixed(0)} ns (murmur3 + binary search over ${Math.ceil(Math.log2(big.points.length))} steps)`
  )

  console.log(`\n## Virtual nodes per node vs worst max/mean over 2..16 nodes\n`)
  console.log(
    table(
      ["virtual nodes", "worst max/mean", "at nodes", "<= 1.05"],
      [256, 512, 1024, 1600, 2048, 3072, 4096, 6144, 8192].map((count) => {
        const w = RingStats.worstBalance(count)
        return [String(count), w.maxOverMean.toFixed(4), String(w.nodes), w.maxOverMean <= 1.05 ? "yes" : "no"]
      })
    )
  )
  return balanced
}

const propertiesSection = async () => {
  console.log(`\n## Properties (fast-check seed ${seed})\n`)
  const ringRuns = Math.max(10, Math.ceil(runs / 4))
  const checks: Array<[string, number, () => unknown]> = [
    [
      "ring: adding a node moves <= 1/(n+1)+0.03, only onto it",
      ringRuns,
      () => Properties.checkAddMovesOnlyToNewcomer({ numRuns: ringRuns, seed })
    ],
    [
      "ring: removing a node moves only its keys",
      ringRuns,
      () => Properties.checkRemoveMovesOnlyItsKeys({ numRuns: ringRuns, seed })
    ],
    [
      "ring: independent of REDIS_NODES order",
      ringRuns,
      () => Properties.checkOrderIndependence({ numRuns: ringRuns, seed })
    ],
    ["buffer + store sums under any flush outcome", runs, () => Properties.checkBufferSums({ numRuns: runs, seed })],
    ["cache: never older than the TTL, never down", runs, () => Properties.checkCacheFreshness({ numRuns: runs, seed })]
  ]
  for (const [name, count, check] of checks) {
    const t = performance.now()
    try {
      await check()
    } catch (error) {
      console.log(`FAILED ${name}\n${error instanceof Error ? error.message : String(error)}`)
      console.log(`reproduce: SIM_SEED=${seed} SIM_RUNS=${runs} npm run sim`)
      process.exit(1)
    }
    console.log(`ok  ${name}: ${count} cases, ${((performance.now() - t) / 1000).toFixed(1)} s`)
  }
}

const simulationSection = () => {
  console.log(`\n## Simulation: ${runs} runs, seeds ${seed}..${seed + runs - 1}, ${eventsPerRun} events each\n`)
  const checks = Object.fromEntries(Object.keys(Simulation.INVARIANTS).map((k) => [k, 0])) as Record<
    Simulation.Invariant,
    number
  >
  const totals = { events: 0, votes: 0, reads: 0, restarts: 0, outages: 0, faults: 0, lostAnswers: 0, virtualMs: 0 }
  sweepSeeds(
    runs,
    (seed) => Simulation.run(Simulation.generate(seed, { events: eventsPerRun })),
    (outcome) => {
      const c = outcome.scenario.config
      const s = outcome.stats
      return (
        `${c.instances} app x ${c.shards.length} redis, journal ${c.journal ? "on " : "off"}, ` +
        `${s.events} events, ${s.votesAccepted} votes, ${s.reads} reads, ${s.restarts} restarts, ${s.outages} outages, ` +
        `${s.timeoutsAfterApply} lost answers, ${outcome.elapsedMs} virtual ms`
      )
    },
    (outcome) => Simulation.formatFailure(outcome, Simulation.shrink(outcome)),
    ({ elapsedMs, stats: s }) => {
      addUp(checks, s.checks)
      addUp(totals, {
        events: s.events,
        votes: s.votesAccepted,
        reads: s.reads,
        restarts: s.restarts,
        outages: s.outages,
        faults: s.faults,
        lostAnswers: s.timeoutsAfterApply,
        virtualMs: elapsedMs
      })
    }
  )
  console.log(
    `\nall ${runs} runs passed: ${totals.events} events, ${totals.votes} accepted votes, ${totals.reads} reads, ` +
      `${totals.restarts} restarts, ${totals.outages} shard outages, ${totals.faults} injected fault bursts, ` +
      `${totals.lostAnswers} answers lost after the write, ${(totals.virtualMs / 1000).toFixed(0)} virtual seconds`
  )
  console.log(`\ninvariants checked:`)
  for (const [k, description] of Object.entries(Simulation.INVARIANTS)) {
    console.log(`  ${k.padEnd(14)} ${String(checks[k as Simulation.Invariant]).padStart(8)}  ${description}`)
  }
}

const clusterSection = () => {
  const count = Math.ceil(runs / 4)
  console.log(`\n## Redis Cluster simulation (WAIT 1): ${count} runs, seeds ${seed}..${seed + count - 1}\n`)
  const totals = { votes: 0, kills: 0, promotions: 0, lostWrites: 0, migrations: 0, moved: 0, repeated: 0 }
  sweepSeeds(
    count,
    (seed) => ClusterSim.run(ClusterSim.generate(seed, { events: eventsPerRun, waitReplicas: 1 })),
    (outcome) => {
      const s = outcome.stats
      const c = s.cluster!
      return (
        `${outcome.scenario.config.instances} app x ${outcome.scenario.config.masters}+` +
        `${outcome.scenario.config.masters} redis, ${s.votesAccepted} votes, ${s.kills} kills, ${c.promotions} ` +
        `failovers (${c.lostWrites} writes lost with their master), ${c.migrations} migrations, ${c.moved} MOVED, ` +
        `${c.lostAnswers} lost answers, ${outcome.elapsedMs} virtual ms`
      )
    },
    (outcome, seed) =>
      ClusterSim.formatFailure(
        outcome,
        ClusterSim.shrink(outcome, outcome.violation!.invariant, ClusterSim.real, 300)
      ) + `\n  reproduce: SIM_SEED=${seed} SIM_RUNS=4 SIM_EVENTS=${eventsPerRun} npm run sim`,
    ({ stats: s }) =>
      addUp(totals, {
        votes: s.votesAccepted,
        kills: s.kills,
        promotions: s.cluster!.promotions,
        lostWrites: s.cluster!.lostWrites,
        migrations: s.cluster!.migrations,
        moved: s.cluster!.moved,
        repeated: s.cluster!.partsRepeated
      })
  )
  console.log(
    `\nall ${count} runs passed: ${totals.votes} accepted votes, ${totals.kills} nodes killed, ${totals.promotions} ` +
      `failovers losing ${totals.lostWrites} unreplicated writes, ${totals.migrations} slot migrations, ` +
      `${totals.moved} MOVED, ${totals.repeated} batch parts sent again and found applied`
  )
}

if (process.env.SIM_REPLAY) {
  replay()
} else {
  console.log(`livepoll simulation sweep: SIM_SEED=${seed} SIM_RUNS=${runs} SIM_EVENTS=${eventsPerRun}`)
  const balanced = ringSection()
  await propertiesSection()
  simulationSection()
  clusterSection()
  console.log(`\ndone in ${((performance.now() - started) / 1000).toFixed(1)} s`)
  if (!balanced) {
    console.log(
      `FAILED ring balance: at ${Ring.DEFAULT_VIRTUAL_NODES} virtual nodes the busiest node owns more than 1.05 / n ` +
        `(see the tables above for a count that does not)`
    )
    process.exit(1)
  }
}
