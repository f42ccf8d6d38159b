import type { CommandUse } from "./commandstats.js"
import type { Latency } from "./load.js"
import { type Scraped, summaryOf } from "./scrape.js"

/** One measured line: a stage of the app, its Fastify peer, the bare node:http ceiling, or direct ioredis. */
export interface Row {
  readonly kind: "stage" | "peer" | "bare" | "direct"
  /**
   * The stage name, `fastify <stage>` for a peer, `bare node:http`, or `ioredis HINCRBY` / `ioredis HINCRBY
   * pipelined` (HGETALL for reads).
   */
  readonly name: string
  /** The stage a row of the app or of a peer runs, as `--stages` names it; null for the baselines. */
  readonly stage: string | null
  /** The settings a variant adds to its stage's own (`cluster-wait0`: `REDIS_WAIT_REPLICAS=0`). */
  readonly settings?: Readonly<Record<string, string>>
  /** The cluster stages: replicas each flushed batch waited for (`WAIT`), as the app said at start. */
  readonly waitReplicas?: number
  readonly workload: string
  readonly connections: number
  readonly seconds: number
  /** 2xx answers (direct: successful commands). */
  readonly requests: number
  /** 2xx answers per second (direct: commands per second). */
  readonly rps: number
  /** `rps` divided by the bare node:http server's for the same workload in this run. */
  readonly ratio: number | null
  /** A stage of the app: `rps` divided by its peer's (same stage, workload and run); null elsewhere. */
  readonly peerRatio: number | null
  /** Microseconds of the server's CPU time per 2xx answer: cpuCores × 10⁶ / rps. */
  readonly cpuUsPerRequest: number | null
  /** A stage of the app: cpuUsPerRequest divided by its peer's; null elsewhere. */
  readonly peerCpuRatio: number | null
  /** Requests per second of each run of this server, in the order they ran; the row is the median run. */
  readonly runs?: ReadonlyArray<number>
  /** CPU µs per 2xx answer of each of those runs, in the same order (null where the CPU could not be read). */
  readonly cpuUsPerRequestRuns?: ReadonlyArray<number | null>
  readonly latencyMs: Latency | null
  readonly non2xx: number
  /** The non-2xx answers by status. */
  readonly non2xxByStatus: Readonly<Record<string, number>>
  readonly errors: number
  /** Redis commands per 1,000 requests, all nodes summed; null where no Redis is involved. */
  readonly redis: CommandUse | null
  /** VmHWM of the server process at the end of the measurement (it is started afresh for each row). */
  readonly peakRssMb: number | null
  /** CPU time the server process used during the measurement, per second of it (1.0 = one core busy). */
  readonly cpuCores: number | null
  /** CPU time the load generator (wrk) used, per second of the measurement; null for direct ioredis. */
  readonly loadCores: number | null
  /**
   * Cores kept busy during the measurement by processes other than the harness and those it started: on a shared
   * machine, how much someone else's work took away (near 0 on a quiet machine).
   */
  readonly otherCores: number | null
  /** The server's exit code after SIGTERM (the app flushes its buffer then); anything but 0 is worth a look. */
  readonly exitCode: number | null
  /** The server's last lines of output, when it did not exit cleanly. */
  readonly log?: string
  /** A stage of the app: its `GET /metrics` read during the measurement (bench/scrape.ts). */
  readonly metrics?: Scraped
}

export interface RssCheck {
  readonly stage: string
  /** Votes answered 2xx, each to a poll of its own (until `distinctPolls` wraps). */
  readonly votes: number
  readonly distinctPolls: number
  readonly seconds: number
  readonly rps: number
  readonly latencyMs: Latency
  readonly non2xx: number
  readonly errors: number
  readonly startMb: number | null
  /** At the sample nearest to half the votes. */
  readonly middleMb: number | null
  readonly endMb: number | null
  readonly peakMb: number | null
  readonly redis: CommandUse | null
  /** RSS against votes answered so far, at most 100 points. */
  readonly timeline: ReadonlyArray<{ readonly votes: number; readonly rssMb: number }>
  readonly otherCores: number | null
  readonly exitCode: number | null
  /** The server's last lines of output, when it did not exit cleanly. */
  readonly log?: string
  /** Its `GET /metrics` read while the votes went in. */
  readonly metrics?: Scraped
}

export interface Target {
  readonly target: string
  readonly measured: string
  readonly met: boolean
}

const fixed = (n: number | null | undefined, digits: number) =>
  n === null || n === undefined || !Number.isFinite(n) ? "-" : n.toFixed(digits)

const thousands = (n: number) => Math.round(n).toLocaleString("en-US")

const table = (header: ReadonlyArray<string>, lines: ReadonlyArray<ReadonlyArray<string>>, left = 2) => {
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)))
  const format = (cells: ReadonlyArray<string>) =>
    cells.map((c, i) => (i < left ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ")
  return [format(header), widths.map((w) => "-".repeat(w)).join("  "), ...lines.map(format)].join("\n")
}

export const formatRows = (rows: ReadonlyArray<Row>): string =>
  table(
    [
      "workload",
      "run",
      "req/s",
      "× bare",
      "× peer",
      "CPU µs/req",
      "µs × peer",
      "p50 ms",
      "p99 ms",
      "max ms",
      "non-2xx",
      "errors",
      "redis cmds/1k",
      "incl. Lua",
      "peak RSS MB",
      "CPU cores",
      "load CPU",
      "other CPU"
    ],
    rows.map((r) => [
      r.workload,
      r.name,
      thousands(r.rps),
      fixed(r.ratio, 2),
      fixed(r.peerRatio, 2),
      fixed(r.cpuUsPerRequest, 1),
      fixed(r.peerCpuRatio, 2),
      fixed(r.latencyMs?.p50, 2),
      fixed(r.latencyMs?.p99, 2),
      fixed(r.latencyMs?.max, 1),
      String(r.non2xx),
      String(r.errors),
      fixed(r.redis?.perThousand, 1),
      fixed(r.redis?.allPerThousand, 1),
      fixed(r.peakRssMb, 0),
      fixed(r.cpuCores, 2),
      fixed(r.loadCores, 2),
      fixed(r.otherCores, 2)
    ])
  )

/** Microseconds of CPU per answer, from the cores a server kept busy at `rps` answers per second. */
export const microsPerRequest = (cpuCores: number | null, rps: number): number | null =>
  cpuCores === null || !(rps > 0) ? null : (cpuCores * 1e6) / rps

/** `value` as a multiple of `base`; null where either is missing or the base is not positive. */
export const ratioTo = (value: number | null | undefined, base: number | null | undefined): number | null =>
  value === null || value === undefined || base === null || base === undefined || !(base > 0) ? null : value / base

type Measured = Omit<Row, "ratio" | "peerRatio" | "cpuUsPerRequest" | "peerCpuRatio">

/**
 * The rows of one workload with their figures relative to others of the same run: every row to `bare`, and each
 * stage of the app to its peer (the row of kind `peer` with the same stage), by answers per second and by CPU per
 * answer.
 */
export const relate = (bare: Measured, rows: ReadonlyArray<Measured>): Array<Row> => {
  const micros = (r: Measured) => microsPerRequest(r.cpuCores, r.rps)
  return rows.map((r) => {
    const peer = r.kind === "stage" ? rows.find((p) => p.kind === "peer" && p.stage === r.stage) : undefined
    return {
      ...r,
      ratio: ratioTo(r.rps, bare.rps),
      peerRatio: peer === undefined ? null : ratioTo(r.rps, peer.rps),
      cpuUsPerRequest: micros(r),
      peerCpuRatio: peer === undefined ? null : ratioTo(micros(r), micros(peer))
    }
  })
}

/**
 * Whether the bare server filled its core: if it did not, something other than the server (the load generator, or
 * other work on the machine) set its rate, and every ratio to it is flattered. wrk's CPU per request says how far one
 * of its cores would carry the load.
 */
export const bareCheck = (rows: ReadonlyArray<Row>, full = 0.9): Array<string> =>
  rows
    .filter((r) => r.kind === "bare" && r.name === "bare node:http" && r.cpuCores !== null)
    .map((r) => {
      const wrk = `wrk used ${fixed(r.loadCores, 2)} cores, ${fixed(microsPerRequest(r.loadCores, r.rps), 1)} µs per request`
      return r.cpuCores! >= full
        ? `${r.workload}: bare node:http kept ${fixed(r.cpuCores, 2)} of its core busy at ${thousands(r.rps)} req/s (${wrk}): the server, not the load generator, is the limit`
        : `${r.workload}: bare node:http kept only ${fixed(r.cpuCores, 2)} of its core busy (${wrk}; other work ${fixed(r.otherCores, 2)} cores): something other than the server set its rate, and the ratios to it are flattered`
    })

export const formatRss = (checks: ReadonlyArray<RssCheck>): string =>
  table(
    [
      "stage",
      "votes",
      "req/s",
      "p99 ms",
      "non-2xx+err",
      "RSS start MB",
      "middle",
      "end",
      "peak",
      "redis cmds/1k",
      "incl. Lua",
      "other CPU"
    ],
    checks.map((c) => [
      c.stage,
      thousands(c.votes),
      thousands(c.rps),
      fixed(c.latencyMs.p99, 2),
      String(c.non2xx + c.errors),
      fixed(c.startMb, 0),
      fixed(c.middleMb, 0),
      fixed(c.endMb, 0),
      fixed(c.peakMb, 0),
      fixed(c.redis?.perThousand, 2),
      fixed(c.redis?.allPerThousand, 2),
      fixed(c.otherCores, 2)
    ]),
    1
  )

/** What the app's own metrics said during each of its measurements: one line per row of the app (and memory check). */
export const formatMetrics = (
  measured: ReadonlyArray<{ readonly workload: string; readonly stage: string; readonly metrics?: Scraped }>
): string =>
  table(
    [
      "workload",
      "stage",
      "readings",
      "peak buffered votes",
      "flush batches",
      "failed",
      "ms/batch",
      "cache hit ratio",
      "loop p99 ms"
    ],
    measured.flatMap(({ workload, stage, metrics }) => {
      if (metrics === undefined) return []
      const s = summaryOf(metrics)
      return [
        [
          workload,
          stage,
          String(s.readings),
          s.peakBufferedVotes === null ? "-" : thousands(s.peakBufferedVotes),
          s.flushBatches === null ? "-" : String(s.flushBatches),
          s.flushFailures === null ? "-" : String(s.flushFailures),
          fixed(s.meanFlushMs, 2),
          fixed(s.cacheHitRatio, 3),
          fixed(s.maxEventLoopP99Ms, 1)
        ]
      ]
    })
  )

/**
 * The median of a server's runs by requests per second; of an even number, the better of the middle two (so the bare
 * server's two runs of a single round give the better one: a slow run of the ceiling must not flatter the ratios).
 */
export const medianRun = <A extends { readonly rps: number }>(runs: ReadonlyArray<A>): A => {
  if (runs.length === 0) throw new Error("no runs to take the median of")
  return [...runs].sort((a, b) => a.rps - b.rps)[Math.floor(runs.length / 2)]!
}

/**
 * The median of some figures where less is better (CPU per answer); of an even number, the better (lower) of the
 * middle two, as medianRun takes the better of its middle two. Nulls are left out; null when none is left.
 */
export const medianLow = (values: ReadonlyArray<number | null>): number | null => {
  const known = values.filter((v): v is number => v !== null).sort((a, b) => a - b)
  return known.length === 0 ? null : known[Math.ceil(known.length / 2) - 1]!
}

export const formatTargets = (targets: ReadonlyArray<Target>): string =>
  targets.map((t) => `${t.met ? "met    " : "NOT met"}  ${t.target}: ${t.measured}`).join("\n")

const VOTES = ["hot", "spread"]

/** The benchmark issue's targets, judged on whatever rows this run has. */
export const targets = (rows: ReadonlyArray<Row>, rss: ReadonlyArray<RssCheck>): Array<Target> => {
  const out: Array<Target> = []
  const stage = (name: string, workloads: ReadonlyArray<string>) =>
    rows.filter((r) => r.kind === "stage" && r.name === name && workloads.includes(r.workload))
  const each = (target: string, picked: ReadonlyArray<Row>, value: (r: Row) => number, ok: (v: number) => boolean) => {
    if (picked.length === 0) return
    out.push({
      target,
      measured: picked.map((r) => `${r.name}/${r.workload} ${fixed(value(r), 2)}`).join(", "),
      met: picked.every((r) => ok(value(r)))
    })
  }
  const ratio = (r: Row) => r.ratio ?? 0
  each("batched votes ≥ 0.7× bare", stage("batched", VOTES), ratio, (v) => v >= 0.7)
  each("full votes ≥ 0.7× bare", stage("full", VOTES), ratio, (v) => v >= 0.7)
  each("cached hot reads ≥ 0.7× bare", stage("cached", ["read"]), ratio, (v) => v >= 0.7)
  const sent = rows.every((r) => r.redis === null || r.redis.perThousand !== null)
  each(
    `batched hot poll ≤ 1 Redis command per 1,000 votes (${sent ? "commands sent; a script call counts once" : "every command executed, Lua-internal ones included"})`,
    stage("batched", ["hot"]),
    (r) => r.redis?.perThousand ?? r.redis?.allPerThousand ?? Infinity,
    (v) => v <= 1
  )
  each(
    "p99 < 5 ms (batched votes, cached reads, full)",
    [...stage("batched", VOTES), ...stage("cached", ["read"]), ...stage("full", [...VOTES, "read"])],
    (r) => r.latencyMs?.p99 ?? Infinity,
    (v) => v < 5
  )
  for (const c of rss) {
    if (c.middleMb === null || c.endMb === null) continue
    out.push({
      target: `${c.stage}: RSS flat over ${thousands(c.votes)} votes on distinct polls (end ≤ 1.2 × middle)`,
      measured: `start ${fixed(c.startMb, 0)} MB, middle ${fixed(c.middleMb, 0)} MB, end ${fixed(c.endMb, 0)} MB`,
      met: c.endMb <= 1.2 * c.middleMb
    })
  }
  return out
}
