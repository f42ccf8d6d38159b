/**
 * `npm run bench`: every stage of the app as a real process, under the same load as a bare node:http server and
 * direct ioredis, in one run, on loopback. Prints a table, writes <out>/latest.json and <out>/latest.svg.
 */
import { execFileSync } from "node:child_process"
import { mkdirSync, writeFileSync } from "node:fs"
import { arch, availableParallelism, cpus, release, totalmem } from "node:os"
import { join, resolve } from "node:path"
import * as Chart from "./chart.js"
import * as Commandstats from "./commandstats.js"
import * as Direct from "./direct.js"
import * as Load from "./load.js"
import * as Monitor from "./monitor.js"
import * as Pin from "./pin.js"
import {
  CLUSTER_STAGES,
  MULTI_PROCESS_STAGES,
  type Options,
  parse,
  PEER_STAGES,
  RSS_STAGES,
  runsAs,
  type Stage,
  type ThroughputWorkload,
  usage
} from "./options.js"
import * as Proc from "./proc.js"
import * as Processes from "./processes.js"
import * as Scrape from "./scrape.js"
import {
  bareCheck,
  formatMetrics,
  formatRows,
  formatRss,
  formatTargets,
  medianLow,
  medianRun,
  microsPerRequest,
  relate,
  type Row,
  type RssCheck,
  targets
} from "./report.js"

const log = (message: string) => process.stderr.write(`${message}\n`)
const lastLines = (output: string) => output.split("\n").slice(-30).join("\n")

const SHARDED: ReadonlyArray<Stage> = ["sharded", "full", "full-workers2"]
/** Cores of other work on the machine past which a row is called skewed. */
const BUSY = 0.2
/** How often the server's memory and CPU are read during a measurement. */
const SAMPLE_MS = 250

let interrupted = false
const machineCores = availableParallelism()

type Measured = Omit<Row, "ratio" | "peerRatio" | "cpuUsPerRequest" | "peerCpuRatio">

interface Nodes {
  readonly first: Processes.RedisNode | undefined
  readonly second: Processes.RedisNode | undefined
  readonly cluster: Processes.RedisCluster | undefined
}

/** The nodes a stage's commands reach: for the cluster stages its masters (the replicas only copy them). */
const nodesOf = (stage: Stage, nodes: Nodes): Array<Processes.RedisNode> => {
  if (stage === "memory") return []
  if (CLUSTER_STAGES.includes(stage)) return [...(nodes.cluster?.masters ?? [])]
  const picked = SHARDED.includes(stage) ? [nodes.first, nodes.second] : [nodes.first]
  return picked.filter((n): n is Processes.RedisNode => n !== undefined)
}

/** Every node emptied before each row; a master's FLUSHALL reaches its replica too. */
const flushAll = (nodes: Nodes) =>
  Promise.all(
    [nodes.first, nodes.second, ...(nodes.cluster?.masters ?? [])].flatMap((n) => (n ? [n.admin.flushall()] : []))
  )

/** MONITOR on each node, unless `--no-monitor`. */
const watchAll = (options: Options, nodes: ReadonlyArray<Processes.RedisNode>) =>
  options.monitor ? Promise.all(nodes.map((n) => Monitor.watch(n.port, n.admin))) : Promise.resolve([])

const stopAll = async (monitors: ReadonlyArray<Monitor.Watch>) =>
  monitors.length > 0 ? Monitor.sum(await Promise.all(monitors.map((m) => m.stop()))) : undefined

/** A JSON POST the measurement depends on; anything but `expected` stops the run. */
const post = async (url: string, body: string, expected: number, what: string) => {
  const response = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body })
  const text = await response.text()
  if (response.status !== expected) throw new Error(`${what} answered ${response.status}: ${text}`)
}

/** A few votes on the hot poll so reads have something to read. */
const seed = async (url: string) => {
  for (const option of Load.OPTIONS) {
    await post(`${url}/vote/${Load.HOT_POLL}`, JSON.stringify({ option_id: option }), 200, "seeding the hot poll")
  }
}

/** Defines the `voters` workload's poll (one vote per voter) on a stage of the app. */
const define = (url: string) => post(`${url}/api/v1/polls`, Load.votersPoll, 201, "defining the voters poll")

/** wrk threads: as asked, or 2 where the harness has two CPUs or more and the connections split evenly. */
const loadThreads = (options: Options, pinning: Pin.Pinning | undefined) => {
  if (options.threads !== undefined) return options.threads
  const cpus = pinning === undefined ? machineCores : pinning.harness.split(",").length
  return cpus >= 2 && options.connections % 2 === 0 ? 2 : 1
}
let threads = 1

/**
 * One server (a stage of the app, its peer, or the bare server) under one workload: started fresh, measured,
 * stopped.
 */
const measure = async (
  options: Options,
  kind: "stage" | "peer" | "bare",
  name: string,
  stage: Stage | null,
  workload: ThroughputWorkload,
  server: Processes.Server,
  redisNodes: ReadonlyArray<Processes.RedisNode>
): Promise<Measured> => {
  const drive = { connections: options.connections, threads }
  if (workload === "read") await seed(server.url)
  // The bare server and the peers have no poll definitions: they refuse a voter's second vote on any poll.
  if (workload === "voters" && kind === "stage") await define(server.url)
  if (options.warmup > 0) await Load.drive(server.url, workload, { ...drive, seconds: options.warmup })
  const admins = redisNodes.map((n) => n.admin)
  const monitors = await watchAll(options, redisNodes)
  const before = admins.length > 0 ? await Commandstats.readAll(admins) : undefined
  const watcher = Proc.watch(server.pid, SAMPLE_MS, undefined, server.multiProcess)
  // The app's own view of the window: its /metrics, read beside the load (only the app has them).
  const scraper = kind === "stage" ? Scrape.watch(server.url) : undefined
  const other = Proc.otherLoad()
  const load = await Load.drive(server.url, workload, { ...drive, seconds: options.duration })
  const otherCores = other()
  const samples = watcher.stop()
  const scraped = await scraper?.stop()
  const exitCode = await server.stop()
  if (exitCode !== 0) log(`${name} exited with code ${exitCode}; its last lines:\n${lastLines(server.output())}`)
  // After the exit, so the final flush of a write-behind buffer is counted with the votes it carries.
  const redis = before
    ? Commandstats.use(before, await Commandstats.readAll(admins), load.ok, await stopAll(monitors))
    : null
  const first = samples[0]
  const last = samples.at(-1)
  const waitReplicas = kind === "stage" ? Processes.waitReplicasOf(server.output()) : undefined
  return {
    kind,
    name,
    stage,
    ...(stage === null || Object.keys(runsAs(stage).settings).length === 0 ? {} : { settings: runsAs(stage).settings }),
    ...(waitReplicas === undefined ? {} : { waitReplicas }),
    workload,
    connections: options.connections,
    seconds: load.seconds,
    requests: load.ok,
    rps: load.rps,
    latencyMs: load.latencyMs,
    non2xx: load.non2xx,
    non2xxByStatus: load.non2xxByStatus,
    errors: load.errors,
    redis,
    peakRssMb: last?.peakRssMb ?? null,
    cpuCores: first && last && last.at > first.at ? (last.cpuSeconds - first.cpuSeconds) / load.seconds : null,
    loadCores: load.loadCores,
    otherCores: otherCores ?? null,
    exitCode,
    ...(exitCode !== 0 ? { log: lastLines(server.output()) } : {}),
    ...(scraped === undefined ? {} : { metrics: { intervalMs: Scrape.SCRAPE_MS, ...scraped } })
  }
}

const peerName = (stage: Stage) => `fastify ${stage}`

/** A stage of the app, or with `peer` the same stage of the Fastify peer, under one workload. */
const runStage = async (options: Options, stage: Stage, workload: ThroughputWorkload, nodes: Nodes, peer = false) => {
  await flushAll(nodes)
  const redisNodes = nodesOf(stage, nodes)
  const server = await (peer
    ? Processes.startPeer(stage, redisNodes)
    : Processes.startApp(stage, redisNodes, options.rateLimits))
  try {
    return await measure(
      options,
      peer ? "peer" : "stage",
      peer ? peerName(stage) : stage,
      stage,
      workload,
      server,
      redisNodes
    )
  } finally {
    await server.stop()
  }
}

const BARE = "bare node:http"
const BARE_FIBER = "bare + Effect fiber"

const runBare = async (options: Options, workload: ThroughputWorkload, fiber = false) => {
  const bare = await Processes.startBare(fiber)
  try {
    return await measure(options, "bare", fiber ? BARE_FIBER : BARE, null, workload, bare, [])
  } finally {
    await bare.stop()
  }
}

const runDirect = async (
  options: Options,
  workload: ThroughputWorkload,
  mode: "unpipelined" | "pipelined",
  node: Processes.RedisNode
): Promise<Measured> => {
  const before = await Commandstats.read(node.admin)
  const other = Proc.otherLoad()
  const result = await Direct.run(node.url, workload, mode, {
    seconds: options.duration,
    concurrency: options.connections,
    stopped: () => interrupted
  })
  const otherCores = other()
  const after = await Commandstats.read(node.admin)
  // The harness sends these itself, with no script: what Redis executed is what was sent.
  const redis = Commandstats.use(before, after, result.ops, Commandstats.diff(before, after))
  return {
    kind: "direct",
    name: `ioredis ${result.command}${mode === "pipelined" ? ` pipelined ×${Direct.PIPELINE_SIZE}` : ""}`,
    stage: null,
    workload,
    connections: mode === "pipelined" ? 1 : options.connections,
    seconds: result.seconds,
    requests: result.ops,
    rps: result.opsPerSecond,
    latencyMs: null,
    non2xx: 0,
    non2xxByStatus: {},
    errors: result.errors,
    redis,
    peakRssMb: null,
    cpuCores: null,
    loadCores: null,
    otherCores: otherCores ?? null,
    exitCode: null
  }
}

/** Votes on `rssVotes` distinct polls, watching the app's memory as they go. */
const runRss = async (options: Options, stage: Stage, nodes: Nodes): Promise<RssCheck> => {
  await flushAll(nodes)
  const redisNodes = nodesOf(stage, nodes)
  const app = await Processes.startApp(stage, redisNodes)
  try {
    const admins = redisNodes.map((n) => n.admin)
    const monitors = await watchAll(options, redisNodes)
    const before = await Commandstats.readAll(admins)
    const running = Load.start(app.url, "spread1m", {
      connections: options.connections,
      threads,
      seconds: options.rssMaxSeconds,
      distinctPolls: options.rssVotes
    })
    const watcher = Proc.watch(app.pid, 500, running.completed)
    const scraper = Scrape.watch(app.url)
    const other = Proc.otherLoad()
    const progress = setInterval(
      () =>
        log(
          `  ${stage}: ${running.completed().toLocaleString("en-US")} votes, RSS ${Proc.sample(app.pid)?.rssMb.toFixed(0)} MB`
        ),
      10_000
    )
    const load = await running.done.finally(() => clearInterval(progress))
    const otherCores = other()
    const samples = watcher.stop()
    const scraped = await scraper.stop()
    const exitCode = await app.stop()
    if (exitCode !== 0) log(`${stage} exited with code ${exitCode}; its last lines:\n${lastLines(app.output())}`)
    const redis = Commandstats.use(before, await Commandstats.readAll(admins), load.ok, await stopAll(monitors))
    const middle = samples.reduce<(typeof samples)[number] | undefined>(
      (best, s) =>
        best === undefined || Math.abs(s.note - load.ok / 2) < Math.abs(best.note - load.ok / 2) ? s : best,
      undefined
    )
    const step = Math.max(1, Math.ceil(samples.length / 100))
    return {
      stage,
      votes: load.ok,
      distinctPolls: Math.min(load.ok, options.rssVotes),
      seconds: load.seconds,
      rps: load.rps,
      latencyMs: load.latencyMs,
      non2xx: load.non2xx,
      errors: load.errors,
      startMb: samples[0]?.rssMb ?? null,
      middleMb: middle?.rssMb ?? null,
      endMb: samples.at(-1)?.rssMb ?? null,
      peakMb: samples.at(-1)?.peakRssMb ?? null,
      redis,
      timeline: samples
        .filter((_, i) => i % step === 0 || i === samples.length - 1)
        .map((s) => ({ votes: s.note, rssMb: Math.round(s.rssMb * 10) / 10 })),
      otherCores: otherCores ?? null,
      exitCode,
      ...(exitCode !== 0 ? { log: lastLines(app.output()) } : {}),
      metrics: { intervalMs: Scrape.SCRAPE_MS, ...scraped }
    }
  } finally {
    await app.stop()
  }
}

const git = (...args: Array<string>) => {
  try {
    return execFileSync("git", args, {
      cwd: Processes.ROOT,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"]
    }).trim()
  } catch {
    return undefined
  }
}

const machine = (redisVersion: string | undefined, pinning: Pin.Pinning | undefined) => ({
  cpu: cpus()[0]?.model ?? "unknown",
  // The machine's, counted before the harness pinned itself to a subset of them.
  cores: machineCores,
  memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
  os: `${process.platform} ${release()} ${arch()}`,
  node: process.version,
  redis: redisVersion ?? null,
  pinning: pinning ?? null
})

const pinned = (pinning: Pin.Pinning | undefined, stages: ReadonlyArray<Stage>) => {
  if (pinning === undefined) return " (not pinned)"
  const every = stages.filter((s) => MULTI_PROCESS_STAGES.includes(s))
  const onEvery = every.length > 0 ? `; ${every.join(", ")} on every CPU` : ""
  return ` (server on CPU ${pinning.server}, wrk and Redis on ${pinning.harness}${onEvery})`
}

/** The stages whose peer runs beside them. */
const peered = (options: Options) => (options.peers ? options.stages.filter((s) => PEER_STAGES.includes(s)) : [])

/** An upper bound on the whole run; past it the harness stops everything and fails. */
const timeBudgetMs = (options: Options, throughputWorkloads: number, rssStages: number) => {
  const perServer = options.warmup + options.duration + 20
  const perRound = 1 + (options.fiberBaseline ? 1 : 0) + options.stages.length + peered(options).length
  const servers = throughputWorkloads * (1 + options.repeat * perRound)
  const direct = throughputWorkloads * 2 * (options.duration + 5)
  const rss = rssStages * (options.rssMaxSeconds + 30)
  const cluster = options.stages.some((s) => CLUSTER_STAGES.includes(s)) ? 60 : 0
  return (2 * (servers * perServer + direct + rss + cluster) + 120) * 1000
}

const main = async (argv: ReadonlyArray<string>) => {
  let options: Options | undefined
  try {
    options = parse(argv)
  } catch (error) {
    log(`${(error as Error).message}\n\n${usage}`)
    return 2
  }
  if (options === undefined) {
    process.stdout.write(usage)
    return 0
  }
  try {
    Load.requireWrk()
  } catch (error) {
    log((error as Error).message)
    return 1
  }
  Processes.snapshotBuild()
  // The commit of the build measured: taken when dist/ is copied aside, as HEAD may move during a long run.
  const commit = git("rev-parse", "--short", "HEAD") ?? null
  // Before anything starts, so a bad --out fails at once.
  const out = resolve(Processes.ROOT, options.out)
  mkdirSync(out, { recursive: true })

  const throughput = options.workloads.filter((w): w is ThroughputWorkload => w !== "spread1m")
  const rssStages = options.workloads.includes("spread1m") ? options.stages.filter((s) => RSS_STAGES.includes(s)) : []
  if (options.workloads.includes("spread1m") && rssStages.length === 0) {
    log(`spread1m runs on the ${RSS_STAGES.join(" and ")} stages only; none of them is selected`)
  }
  const budget = timeBudgetMs(options, throughput.length, rssStages.length)
  const watchdog = setTimeout(() => {
    log(`the benchmark ran past its time bound of ${Math.round(budget / 1000)} s; stopping`)
    Load.stopAllLoads()
    void Processes.stopAll().finally(() => process.exit(1))
  }, budget)
  watchdog.unref()

  // Before Redis starts, so the redis-server processes inherit the harness's CPUs.
  const pinning = options.pin ? Pin.apply() : undefined
  Processes.pinServers(pinning)
  if (options.pin && pinning === undefined) log("not pinned to cores (needs taskset and two CPUs): expect more noise")
  threads = loadThreads(options, pinning)

  const needSecond = [...options.stages, ...rssStages].some((s) => SHARDED.includes(s))
  const needFirst = throughput.length > 0 || [...options.stages, ...rssStages].some((s) => s !== "memory")
  const first = needFirst ? await Processes.startRedis("redis-1", options.fsync) : undefined
  const second = needSecond ? await Processes.startRedis("redis-2", options.fsync) : undefined
  const needCluster = options.stages.some((s) => CLUSTER_STAGES.includes(s))
  if (needCluster) log("starting a Redis Cluster of 3 masters and 3 replicas")
  const cluster = needCluster ? await Processes.startCluster(options.fsync) : undefined
  if (cluster !== undefined)
    log(`the Redis Cluster is ready: masters ${cluster.masters.map((m) => `:${m.port}`).join(" ")}`)
  const nodes: Nodes = { first, second, cluster }

  const rows: Array<Row> = []
  const peers = peered(options)
  for (const workload of throughput) {
    // Rounds of the bare server and every stage (each followed by its peer), then the bare server once more: each
    // server's row is its median run, and the ceiling is never judged on one unlucky run of it (a shared machine's
    // noise would flatter every ratio of the workload).
    const bareRuns: Array<Measured> = []
    const fiberRuns: Array<Measured> = []
    const stageRuns = new Map<Stage, Array<Measured>>(options.stages.map((s) => [s, []]))
    const peerRuns = new Map<Stage, Array<Measured>>(peers.map((s) => [s, []]))
    const round = (n: number) => (options.repeat > 1 ? ` (round ${n} of ${options.repeat})` : "")
    for (let n = 1; n <= options.repeat && !interrupted; n++) {
      log(`workload ${workload}: ${BARE}${round(n)}`)
      bareRuns.push(await runBare(options, workload))
      if (options.fiberBaseline && !interrupted) {
        log(`workload ${workload}: ${BARE_FIBER}${round(n)}`)
        fiberRuns.push(await runBare(options, workload, true))
      }
      for (const stage of options.stages) {
        if (interrupted) break
        log(`workload ${workload}: stage ${stage}${round(n)}`)
        stageRuns.get(stage)!.push(await runStage(options, stage, workload, nodes))
        if (!peerRuns.has(stage) || interrupted) continue
        log(`workload ${workload}: ${peerName(stage)}${round(n)}`)
        peerRuns.get(stage)!.push(await runStage(options, stage, workload, nodes, true))
      }
    }
    if (interrupted) break
    log(`workload ${workload}: ${BARE}, again`)
    bareRuns.push(await runBare(options, workload))
    const median = (runs: ReadonlyArray<Measured>) => ({
      ...medianRun(runs),
      runs: runs.map((r) => r.rps),
      cpuUsPerRequestRuns: runs.map((r) => microsPerRequest(r.cpuCores, r.rps))
    })
    const bare = median(bareRuns)
    const measured: Array<Measured> = [bare]
    if (fiberRuns.length > 0) measured.push(median(fiberRuns))
    for (const [stage, runs] of stageRuns) {
      measured.push(median(runs))
      const peer = peerRuns.get(stage)
      if (peer !== undefined) measured.push(median(peer))
    }
    if (first !== undefined) {
      for (const mode of ["unpipelined", "pipelined"] as const) {
        if (interrupted) break
        log(`workload ${workload}: direct ioredis, ${mode}`)
        measured.push(await runDirect(options, workload, mode, first))
      }
    }
    rows.push(...relate(bare, measured))
    if (interrupted) break
  }
  const rss: Array<RssCheck> = []
  for (const stage of rssStages) {
    if (interrupted) break
    log(`workload spread1m: stage ${stage} (${options.rssVotes.toLocaleString("en-US")} votes, distinct polls)`)
    rss.push(await runRss(options, stage, nodes))
  }
  if (interrupted) return 130

  const met = targets(rows, rss)
  const report = {
    date: new Date().toISOString(),
    command: `npm run bench${argv.length > 0 ? ` -- ${argv.join(" ")}` : ""}`,
    commit,
    machine: machine(first?.version ?? second?.version ?? cluster?.version, pinning),
    options: { ...options, threads },
    definitions: {
      rps: "2xx answers per second over the measured window (direct ioredis: commands per second)",
      bareFiber:
        "the bare node:http server (bench/bare.ts) running each request's work in an Effect fiber of its own, forked on the default runtime once the body is read, as the app runs each request: what one fiber per request costs with nothing else of the app",
      peer: "kind peer, named `fastify <stage>`: bench/peers/fastify.ts, the assignment's stage written the ordinary way with Fastify and ioredis (same routes and bodies; no option cap, no idempotent flush, no journal, no live feed, no poll definitions; a voter_id is checked with SADD, or a Set for memory), compiled with esbuild and run as its own process like the app; `full` has no peer",
      ratio:
        "rps divided by the bare node:http server's rps for the same workload in this run. Each server runs `repeat` times in rounds (bare, the bare server with a fiber per request unless --no-fiber-baseline, then each stage followed by its peer unless --no-peers), and the bare server once more at the end; each row is its server's median run by rps (of an even number, the better of the middle two), and runs lists every run's rps",
      peerRatio: "rows of the app: rps divided by the rps of the peer of the same stage, same workload and run",
      cpuUsPerRequest: "microseconds of the server's CPU time per 2xx answer: cpuCores × 1,000,000 / rps",
      cpuUsPerRequestRuns:
        "cpuUsPerRequest of each run in runs, same order: the row's own is its median run's by rps, and the harness prints the median of these beside it (of an even number, the lower of the middle two)",
      peerCpuRatio: "rows of the app: cpuUsPerRequest divided by the peer's of the same stage",
      latencyMs:
        "of every answer, from wrk's latency histogram (microsecond buckets) with the samples wrk adds for coordinated omission taken out again (bench/load.ts), so they are the response times measured; p99Corrected is wrk's own p99, those samples included",
      non2xx: "answers with a status outside 200-299, from the wrk script's response(); non2xxByStatus by status",
      errors: "wrk's socket errors (connect, read, write) and timeouts (10 s)",
      redis:
        "per 1,000 2xx answers, all Redis nodes of the stage summed, from the start of the measured window until the app has exited (its final flush included). perThousand and byCommand: the commands clients sent, a script call (EVALSHA) counting once, counted with MONITOR (whose lines tell a script's own commands apart); allPerThousand and allByCommand: every command Redis executed, those scripts ran inside included, from INFO commandstats; INFO, ECHO, MONITOR, QUIT, CLIENT, CONFIG, COMMAND, HELLO, SELECT, FLUSHALL and REPLCONF (a replica's acknowledgements to its master) are left out of both; for the cluster stages, the masters only",
      peakRssMb:
        "VmHWM of the server process, which is started afresh for each row (warm-up included); for full-workers2 the sum of its primary's and workers' (each process's own peak)",
      cpuCores:
        "CPU seconds the server process used during the measured window, per second; for full-workers2 the sum over its primary and every process below it (its workers)",
      workers:
        "the full-workers2 rows: POLL_STAGE=full with WORKERS=2, a primary forking two workers through node:cluster; started on every CPU (taskset with all the harness's CPUs) rather than alone on the server's one, so the workers share cores with wrk and Redis",
      loadCores:
        "CPU seconds wrk used (every thread, from clock() in its script), per second of its run: near its thread count, wrk would be the limit",
      otherCores:
        "cores kept busy during the window by processes other than the harness and those it started (the machine's busy time in /proc/stat minus our process tree's): other work on a shared machine; near 0 when the machine was quiet",
      redisServer: `redis-server with AOF on, appendfsync ${options.fsync}, on loopback; the load generator (wrk, ${threads} thread${threads === 1 ? "" : "s"}, keep-alive connections) runs on the same machine`,
      cluster: `the cluster and cluster-wait0 rows: POLL_STAGE=cluster on a Redis Cluster the harness starts (scripts/cluster.ts's nodes: 3 masters and a replica each, AOF on, appendfsync ${options.fsync}, on loopback), REDIS_CLUSTER naming its masters; cluster leaves REDIS_WAIT_REPLICAS unset (1 here, every master having a replica), cluster-wait0 sets it to 0 (no WAIT after a flushed batch); waitReplicas is what the app said it would wait for, and redis counts the masters' commands (the replicas' copies of them are not counted)`,
      metrics: `rows of the app and memory checks: its GET /metrics read every ${Scrape.SCRAPE_MS} ms during the measured window (bench/scrape.ts), outside wrk's load and not counted in it (the app's CPU time includes answering them); each reading has the buffered votes and entries (every node; null without a write-behind buffer), the flush batches and failures, the seconds those batches took to send (flushSeconds; the table's ms/batch is its mean per batch), and the results cache's hits and misses since the first reading, the results and definitions caches' hit ratios since the previous reading (null when nothing was looked up), and the event loop's p99 delay in ms`,
      pinning:
        "CPUs (taskset lists) of the harness, which runs the direct ioredis baselines and starts wrk and redis-server (they inherit its CPUs), and of every server under test, each alone on its CPU (full-workers2, a primary and two workers: on every CPU, the harness's too); null: not pinned, the kernel placed everything"
    },
    rows,
    rss,
    targets: met
  }

  writeFileSync(join(out, "latest.json"), `${JSON.stringify(report, null, 2)}\n`)
  const m = report.machine
  const busiest = Math.max(0, ...rows.map((r) => r.otherCores ?? 0), ...rss.map((r) => r.otherCores ?? 0))
  const bars = rows
    .filter((r) => r.kind !== "direct" && r.ratio !== null)
    .map((r) => ({ stage: r.name, workload: r.workload, ratio: r.ratio! }))
  // A run of the memory check alone has no throughput to chart; the last chart stays as it was.
  const charted = bars.length > 0
  if (charted) {
    const svg = await Chart.render(bars, {
      stages: [
        BARE,
        ...(options.fiberBaseline ? [BARE_FIBER] : []),
        ...options.stages.flatMap((s) => (peers.includes(s) ? [s, peerName(s)] : [s]))
      ],
      workloads: throughput,
      subtitle: [
        `wrk, ${options.connections} connections, ${options.duration} s per bar; ${m.cores} cores${pinned(pinning, options.stages)}, ${m.memoryGiB} GiB, ${m.cpu}; Node ${m.node}, Redis ${m.redis ?? "-"}; ${report.date.slice(0, 10)}`,
        ...(busiest > BUSY
          ? [`other work on the machine took up to ${busiest.toFixed(2)} cores during a bar: skewed`]
          : [])
      ]
    })
    writeFileSync(join(out, "latest.svg"), svg)
  }
  const points = [
    ...rows.flatMap((r) =>
      r.kind === "stage" && r.metrics !== undefined ? Scrape.pointsOf(r.name, r.workload, r.metrics.readings) : []
    ),
    ...rss.flatMap((c) => (c.metrics === undefined ? [] : Scrape.pointsOf(c.stage, "spread1m", c.metrics.readings)))
  ]
  const timeline = points.length > 0
  if (timeline) {
    const svg = await Chart.renderTimeline(points, {
      stages: options.stages,
      workloads: [...throughput, ...(rss.length > 0 ? ["spread1m"] : [])],
      subtitle: [
        `GET /metrics every ${Scrape.SCRAPE_MS} ms during each measured window; wrk, ${options.connections} connections; flush batches counted from the window's start; cache hit ratio per reading; ${report.date.slice(0, 10)}`
      ]
    })
    writeFileSync(join(out, "latest-metrics.svg"), svg)
  }

  const print = (text: string) => process.stdout.write(`${text}\n`)
  print(
    `\nlivepoll benchmark: wrk (${threads} thread${threads === 1 ? "" : "s"}), ${options.connections} connections, ${throughput.length > 0 ? `${options.duration} s per row (+${options.warmup} s warm-up)` : `${options.rssVotes.toLocaleString("en-US")} votes on distinct polls per stage, at most ${options.rssMaxSeconds} s`}; ${m.cores} cores${pinned(pinning, options.stages)}, ${m.memoryGiB} GiB, Node ${m.node}, Redis ${m.redis ?? "-"}\n`
  )
  if (busiest > BUSY) {
    print(
      `note: other work on this machine took up to ${busiest.toFixed(2)} cores during a row ("other CPU"): those rows are skewed\n`
    )
  }
  if (rows.length > 0) print(formatRows(rows))
  if (rows.length > 0) print(`\n${bareCheck(rows).join("\n")}`)
  for (const r of rows.filter((r) => (r.runs?.length ?? 0) > 1)) {
    const runs = r.runs!.map((rps) => Math.round(rps).toLocaleString("en-US")).join(", ")
    const cpu = (r.cpuUsPerRequestRuns ?? []).map((us) => (us === null ? "-" : us.toFixed(1))).join(", ")
    const cpuMedian = medianLow(r.cpuUsPerRequestRuns ?? [])
    print(
      `${r.workload} ${r.name}: runs of ${runs} req/s; the row is the median` +
        (cpuMedian === null ? "" : `; CPU µs/req ${cpu}, median ${cpuMedian.toFixed(1)}`)
    )
  }
  if (rss.length > 0) print(`\n${formatRss(rss)}`)
  const scrapedRows = [
    ...rows.flatMap((r) => (r.kind === "stage" && r.stage !== null ? [{ ...r, stage: r.stage }] : [])),
    ...rss.map((c) => ({ ...c, workload: "spread1m" }))
  ]
  if (scrapedRows.some((r) => r.metrics !== undefined)) {
    print(`\nthe app's /metrics during each measurement:\n${formatMetrics(scrapedRows)}`)
  }
  if (met.length > 0) print(`\ntargets:\n${formatTargets(met)}`)
  const written = ["latest.json", ...(charted ? ["latest.svg"] : []), ...(timeline ? ["latest-metrics.svg"] : [])]
  print(`\nwrote ${written.map((file) => join(options.out, file)).join(", ")}`)
  for (const r of rows.filter((r) => r.stage === "cluster" && r.waitReplicas !== 1)) {
    print(
      `note: ${r.name}/${r.workload} waited for ${r.waitReplicas ?? "no"} replicas, not 1: the app did not see them`
    )
  }
  const troubled = [...rows, ...rss].filter((r) => r.exitCode !== null && r.exitCode !== 0)
  for (const r of troubled) {
    const what = "name" in r ? `${r.name}/${r.workload}` : `${r.stage}/spread1m`
    print(`note: ${what} did not exit cleanly (code ${r.exitCode}): its output is in the JSON's "log"`)
  }
  return 0
}

const stopOnSignal = (signal: NodeJS.Signals) => {
  process.on(signal, () => {
    if (interrupted) return
    interrupted = true
    log(`\n${signal}: stopping the load and every process started`)
    Load.stopAllLoads()
    void Processes.stopAll().finally(() => process.exit(130))
  })
}
stopOnSignal("SIGINT")
stopOnSignal("SIGTERM")

main(process.argv.slice(2))
  .then(
    (code) => code,
    (error: unknown) => {
      if (interrupted) return 130
      log(error instanceof Error ? (error.stack ?? error.message) : String(error))
      return 1
    }
  )
  .then(async (code) => {
    await Processes.stopAll()
    process.exit(code)
  })
