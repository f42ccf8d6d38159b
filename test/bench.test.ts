import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync } from "node:fs"
import { createServer, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Commandstats from "../bench/commandstats.js"
import * as Load from "../bench/load.js"
import * as Monitor from "../bench/monitor.js"
import { defaults, parse, type Workload } from "../bench/options.js"
import * as Pin from "../bench/pin.js"
import * as Proc from "../bench/proc.js"
import { envOf, type RedisNode, waitReplicasOf } from "../bench/processes.js"
import {
  bareCheck,
  formatMetrics,
  formatRss,
  medianLow,
  medianRun,
  microsPerRequest,
  ratioTo,
  relate
} from "../bench/report.js"
import * as Scrape from "../bench/scrape.js"
import { parseExposition } from "./support/exposition.js"
import { type RedisServer, startRedis } from "./support/redis.js"
import { eventually, sleep } from "./support/wait.js"

// The harness runs as its own process, as `npm run bench` runs it. Whatever it might leave behind is found by a marker
// in the environment every process it starts inherits, or, for redis-server (which writes its title over its
// environment), by its working directory: its data directory, under the TMPDIR given to this run.
const MARKER = "LIVEPOLL_BENCH_TEST_RUN"

interface Run {
  readonly child: ChildProcess
  readonly marker: Marker
  readonly stdout: () => string
  readonly stderr: () => string
  readonly exited: Promise<number | null>
}

const started: Array<Run> = []
const outDirs: Array<string> = []
const outDir = () => {
  const dir = mkdtempSync(join(tmpdir(), "livepoll-bench-test-"))
  outDirs.push(dir)
  return dir
}

interface Marker {
  readonly id: string
  readonly tmp: string
}

const harness = (args: ReadonlyArray<string>, env: Record<string, string> = {}): Run => {
  const marker = { id: randomUUID(), tmp: outDir() }
  const child = spawn(process.execPath, ["--import", "tsx", "bench/run.ts", ...args], {
    env: { ...process.env, [MARKER]: marker.id, TMPDIR: marker.tmp, ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let stdout = ""
  let stderr = ""
  child.stdout!.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
  child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
  const run = { child, marker, stdout: () => stdout, stderr: () => stderr, exited }
  started.push(run)
  return run
}

const marked = (pid: string, marker: Marker) => {
  try {
    if (readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").includes(`${MARKER}=${marker.id}`)) return true
  } catch {
    // gone meanwhile, or not ours to read
  }
  try {
    return readlinkSync(`/proc/${pid}/cwd`).startsWith(marker.tmp)
  } catch {
    return false
  }
}

/** Processes still alive that belong to this run, with their command lines. */
const leftovers = (marker: Marker): Array<string> => {
  const found: Array<string> = []
  for (const pid of readdirSync("/proc").filter((e) => /^\d+$/.test(e))) {
    if (!marked(pid, marker)) continue
    try {
      found.push(`${pid}: ${readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ")}`)
    } catch {
      // gone meanwhile
    }
  }
  return found
}

const settled = (marker: Marker) =>
  eventually(
    async () => leftovers(marker),
    (found) => found.length === 0,
    3000
  )

beforeAll(async () => {
  // The whole build, the page's bundled script and style included (a tsc-only dist/ lacks them).
  if (existsSync("dist/main.js") && existsSync("dist/Page/script.js")) return
  const output = await new Promise<string>((resolve, reject) =>
    execFile("npm", ["run", "--silent", "build"], (error, stdout, stderr) =>
      error ? reject(new Error(`${stdout}${stderr}`)) : resolve(stdout)
    )
  )
  expect(output).toBe("")
}, 120_000)

afterAll(async () => {
  // A run a failed test left going gets Ctrl-C (it cleans up after itself); anything of it still alive after that is
  // killed by its process id.
  for (const run of started) {
    if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill("SIGINT")
    await Promise.race([run.exited, sleep(15_000)])
    for (const line of leftovers(run.marker)) {
      try {
        process.kill(Number(line.slice(0, line.indexOf(":"))), "SIGKILL")
      } catch {
        // gone meanwhile
      }
    }
  }
  for (const dir of outDirs) rmSync(dir, { recursive: true, force: true })
}, 60_000)

/** Rows of an HTTP server (not direct ioredis). */
const served = (rows: ReadonlyArray<any>) => rows.filter((r) => r.kind !== "direct")

describe("npm run bench", () => {
  it("measures each stage and its peer against the baselines with wrk, writes the JSON and the chart, and leaves no process behind", async () => {
    const out = outDir()
    const run = harness([
      "--duration",
      "1",
      "--warmup",
      "0",
      "--connections",
      "8",
      "--stages",
      "memory,batched",
      "--workloads",
      "hot",
      "--out",
      out
    ])
    const code = await run.exited
    expect(code, `${run.stdout()}\n${run.stderr()}`).toBe(0)

    const report = JSON.parse(readFileSync(join(out, "latest.json"), "utf8"))
    const byName = new Map<string, any>(report.rows.map((r: any) => [r.name, r]))
    expect(report.rows.map((r: any) => `${r.kind}:${r.name}:${r.workload}`)).toEqual([
      "bare:bare node:http:hot",
      "bare:bare + Effect fiber:hot",
      "stage:memory:hot",
      "peer:fastify memory:hot",
      "stage:batched:hot",
      "peer:fastify batched:hot",
      "direct:ioredis HINCRBY:hot",
      "direct:ioredis HINCRBY pipelined ×1000:hot"
    ])
    const bare = byName.get("bare node:http")
    for (const row of report.rows) {
      expect(row.requests, row.name).toBeGreaterThan(0)
      expect(row.rps, row.name).toBeGreaterThan(0)
      expect(row.ratio, row.name).toBeCloseTo(row.rps / bare.rps, 9)
    }
    expect(bare.ratio).toBe(1)
    for (const row of served(report.rows)) {
      // Every vote answered 200, none lost to a socket error.
      expect(row.non2xx, row.name).toBe(0)
      expect(row.non2xxByStatus, row.name).toEqual({})
      expect(row.errors, row.name).toBe(0)
      expect(row.cpuCores, row.name).toBeGreaterThan(0)
      expect(row.cpuUsPerRequest, row.name).toBeCloseTo((row.cpuCores * 1e6) / row.rps, 6)
      expect(row.loadCores, `${row.name}: wrk's own CPU`).toBeGreaterThan(0)
    }
    for (const stage of ["memory", "batched"]) {
      const app = byName.get(stage)
      const peer = byName.get(`fastify ${stage}`)
      expect(peer.stage).toBe(stage)
      expect(app.peerRatio, stage).toBeCloseTo(app.rps / peer.rps, 9)
      expect(app.peerCpuRatio, stage).toBeCloseTo(app.cpuUsPerRequest / peer.cpuUsPerRequest, 9)
      expect(peer.peerRatio).toBeNull()
    }
    expect(bare.peerRatio).toBeNull()
    // One wrk thread per harness CPU, at most two (one here, where the server has the other of two CPUs).
    const harnessCpus = Pin.plan(allowedCpus())?.harness.split(",").length ?? allowedCpus().length
    expect(report.options.threads).toBe(harnessCpus >= 2 ? 2 : 1)
    // Server alone on the last CPU, the harness (wrk, Redis) on the others; on one CPU nothing to split.
    expect(report.machine.pinning).toEqual(Pin.plan(allowedCpus()) ?? null)
    expect(report.machine.cores).toBe(allowedCpus().length)
    // Measured before and after the stages; the better run is the baseline.
    expect(bare.runs).toHaveLength(2)
    expect(bare.rps).toBe(Math.max(...bare.runs))
    expect(byName.get("batched").runs).toEqual([byName.get("batched").rps])
    expect(byName.get("fastify batched").runs).toEqual([byName.get("fastify batched").rps])
    expect(byName.get("bare + Effect fiber").runs).toEqual([byName.get("bare + Effect fiber").rps])
    expect(run.stdout()).toMatch(
      /^hot bare node:http: runs of [\d,]+, [\d,]+ req\/s; the row is the median; CPU µs\/req \d+\.\d, \d+\.\d, median \d+\.\d$/m
    )
    expect(bare.cpuUsPerRequestRuns).toHaveLength(2)
    // The row is the faster run; its CPU per answer is that run's.
    expect(bare.cpuUsPerRequestRuns[bare.runs.indexOf(bare.rps)]).toBeCloseTo(bare.cpuUsPerRequest, 9)
    for (const row of served(report.rows)) {
      const name = row.name
      expect(row.latencyMs.p50, name).toBeGreaterThan(0)
      expect(row.latencyMs.p99, name).toBeGreaterThanOrEqual(row.latencyMs.p50)
      expect(row.latencyMs.max, name).toBeGreaterThanOrEqual(row.latencyMs.p99)
      expect(row.latencyMs.p99Corrected, name).toBeGreaterThan(0)
      expect(row.peakRssMb, name).toBeGreaterThan(10)
      expect(row.exitCode, `${name} stops cleanly on SIGTERM`).toBe(0)
    }
    // Memory touches no Redis; the batched stage's buffered votes reach Redis by the flush at exit, which is counted,
    // the app's as its script, the peer's as one MULTI of HINCRBYs.
    expect(byName.get("memory").redis).toBeNull()
    expect(byName.get("fastify memory").redis).toBeNull()
    const batched = byName.get("batched").redis
    expect(batched.perThousand).toBeGreaterThan(0)
    expect(batched.allPerThousand).toBeGreaterThanOrEqual(batched.perThousand)
    const peerBatched = byName.get("fastify batched").redis.byCommand
    expect(peerBatched.multi).toBeGreaterThan(0)
    expect(peerBatched.exec).toBe(peerBatched.multi)
    expect(peerBatched.hincrby).toBeGreaterThan(0)
    expect(byName.get("ioredis HINCRBY").redis.byCommand.hincrby).toBeCloseTo(1000, 0)

    expect(run.stdout()).toMatch(/req\/s\s+× bare\s+× peer\s+CPU µs\/req/)
    expect(run.stdout()).toMatch(/^hot\s+batched\s+[\d,]+\s+\d+\.\d\d\s+\d+\.\d\d\s+\d+\.\d\s/m)
    expect(run.stdout()).toMatch(/^hot\s+fastify batched\s+[\d,]+\s+\d+\.\d\d\s+-\s+\d+\.\d\s/m)
    // Whether the bare server filled its core, said either way.
    expect(run.stdout()).toMatch(/^hot: bare node:http kept (only )?\d\.\d\d of its core busy/m)

    const svg = readFileSync(join(out, "latest.svg"), "utf8")
    expect(svg.startsWith("<svg")).toBe(true)
    expect(svg.trimEnd().endsWith("</svg>")).toBe(true)
    for (const label of ["memory", "batched", "fastify batched", "bare node:http"]) expect(svg).toContain(`>${label}<`)
    expect(svg.split(">target 0.7×<").length, "the target line's label, drawn once").toBe(2)

    // The app's /metrics, read during each of its rows (and only its rows): the buffer where the stage has one.
    for (const row of report.rows) {
      if (row.kind !== "stage") expect(row.metrics, row.name).toBeUndefined()
      else {
        expect(row.metrics.intervalMs, row.name).toBe(Scrape.SCRAPE_MS)
        expect(row.metrics.readings.length, row.name).toBeGreaterThanOrEqual(2)
        expect(row.metrics.failed, row.name).toBe(0)
      }
    }
    const readings = (stage: string) => byName.get(stage).metrics.readings
    expect(readings("memory").every((r: any) => r.bufferedVotes === null)).toBe(true)
    expect(readings("batched").every((r: any) => typeof r.bufferedVotes === "number")).toBe(true)
    expect(Math.max(...readings("batched").map((r: any) => r.bufferedVotes))).toBeGreaterThan(0)
    const times = readings("batched").map((r: any) => r.at)
    expect(times).toEqual([...times].sort((a, b) => a - b))
    expect(run.stdout()).toMatch(/^hot\s+batched\s+\d+\s+[\d,]+\s+\d+\s+\d+\s/m)
    const timeline = readFileSync(join(out, "latest-metrics.svg"), "utf8")
    expect(timeline.startsWith("<svg")).toBe(true)
    for (const label of ["buffered votes", "flush batches", "batched"]) expect(timeline).toContain(`>${label}<`)
    expect(run.stdout()).toContain(
      `wrote ${join(out, "latest.json")}, ${join(out, "latest.svg")}, ${join(out, "latest-metrics.svg")}`
    )

    expect(await settled(run.marker)).toEqual([])
  }, 60_000)

  it("measures one vote per voter: a defined poll, a new voter each request from each of two wrk threads", async () => {
    const out = outDir()
    const args = ["--duration", "1", "--warmup", "0", "--connections", "8", "--stages", "batched", "--threads", "2"]
    // Without the fiber baseline: bare, the stage, its peer and the direct baselines only.
    const run = harness([...args, "--repeat", "2", "--workloads", "voters", "--no-fiber-baseline", "--out", out])
    const code = await run.exited
    expect(code, `${run.stdout()}\n${run.stderr()}`).toBe(0)
    const report = JSON.parse(readFileSync(join(out, "latest.json"), "utf8"))
    expect(report.rows.map((r: any) => `${r.kind}:${r.name}:${r.workload}`)).toEqual([
      "bare:bare node:http:voters",
      "stage:batched:voters",
      "peer:fastify batched:voters",
      "direct:ioredis SADD+HINCRBY:voters",
      "direct:ioredis SADD+HINCRBY pipelined ×1000:voters"
    ])
    expect(report.options.threads).toBe(2)
    for (const row of report.rows) {
      expect(row.requests, row.name).toBeGreaterThan(0)
      // Every request is a new voter's: a refusal would mean ids repeat (across wrk's threads too), or the poll was
      // not defined.
      expect(row.non2xx, row.name).toBe(0)
    }
    const [bare, stage, peer, direct, pipelined] = report.rows
    // Two rounds, and the bare server once more: each row is its median run (of two, the better).
    expect(bare.runs).toHaveLength(3)
    expect(bare.rps).toBe([...bare.runs].sort((a: number, b: number) => a - b)[1])
    expect(stage.runs).toHaveLength(2)
    expect(stage.rps).toBe(Math.max(...stage.runs))
    expect(peer.runs).toHaveLength(2)
    expect(stage.ratio).toBeCloseTo(stage.rps / bare.rps, 9)
    expect(stage.peerRatio).toBeCloseTo(stage.rps / peer.rps, 9)
    // Each vote is one script before its 200: the voter's record and the count together (EVALSHA; EVAL the first
    // time a connection meets the script).
    // Per 1,000 answers counted; the votes in flight when wrk stopped (one per connection at most) were served too.
    // (Counts per 1,000 are rounded to three decimals.)
    const inFlight = (row: any) => 1000 * (1 + 8 / row.requests) + 0.002
    const scripts = (stage.redis.byCommand.evalsha ?? 0) + (stage.redis.byCommand.eval ?? 0)
    expect(scripts).toBeGreaterThanOrEqual(999)
    // A script or two more at most: the flush at exit.
    expect(scripts).toBeLessThanOrEqual(inFlight(stage) + 2)
    expect(stage.redis.byCommand.sadd ?? 0).toBe(0)
    // Anything else is a handful of commands (the definition, the flush), not one more per vote.
    expect(stage.redis.perThousand - scripts).toBeLessThan(100)
    // The peer records each voter with a SADD of its own before the vote goes to its buffer.
    expect(peer.redis.byCommand.sadd).toBeGreaterThanOrEqual(1000)
    expect(peer.redis.byCommand.sadd).toBeLessThanOrEqual(inFlight(peer))
    for (const row of [direct, pipelined]) {
      expect(row.redis.byCommand.sadd, row.name).toBeCloseTo(1000, 0)
      expect(row.redis.byCommand.hincrby, row.name).toBeCloseTo(1000, 0)
    }
    expect(await settled(run.marker)).toEqual([])
  }, 60_000)

  it("votes on each of spread1m's distinct polls once, watching the app's memory, and ends when they are all in", async () => {
    const out = outDir()
    const args = ["--stages", "batched", "--workloads", "spread1m", "--rss-votes", "3000", "--connections", "8"]
    const run = harness([...args, "--rss-max-seconds", "60", "--out", out])
    const code = await run.exited
    expect(code, `${run.stdout()}\n${run.stderr()}`).toBe(0)
    const report = JSON.parse(readFileSync(join(out, "latest.json"), "utf8"))
    expect(report.rows).toEqual([])
    const [check] = report.rss
    expect(check).toMatchObject({
      stage: "batched",
      votes: 3000,
      distinctPolls: 3000,
      non2xx: 0,
      errors: 0,
      exitCode: 0
    })
    expect(check.seconds).toBeLessThan(30)
    expect(check.startMb).toBeGreaterThan(10)
    expect(check.peakMb).toBeGreaterThanOrEqual(check.endMb)
    expect(check.timeline.length).toBeGreaterThan(0)
    // The buffered votes reach Redis by the flush at exit at the latest, which is counted.
    expect(check.redis.allPerThousand).toBeGreaterThan(0)
    expect(run.stdout()).toMatch(/^batched\s+3,000\s/m)
    // The buffer seen filling from the app's own metrics, and drained by the flush at exit (not read any more then).
    expect(check.metrics.readings.length).toBeGreaterThanOrEqual(2)
    expect(Math.max(...check.metrics.readings.map((r: any) => r.bufferedVotes))).toBeGreaterThan(0)
    expect(run.stdout()).toMatch(/^spread1m\s+batched\s/m)
    expect(await settled(run.marker)).toEqual([])
  }, 60_000)

  it("stops the load and every process it started on Ctrl-C", async () => {
    const run = harness(["--duration", "30", "--stages", "batched", "--workloads", "hot", "--out", outDir()])
    // Interrupt mid-measurement: the first server measured is the bare node:http one, with Redis already up.
    const deadline = Date.now() + 20_000
    // A load run has its script (-s); `wrk -v`, the start-up check that wrk is installed, has none.
    while (!leftovers(run.marker).some((p) => /\bwrk .* -s /.test(p))) {
      if (Date.now() > deadline) throw new Error(`wrk never started:\n${run.stderr()}`)
      await sleep(50)
    }
    await sleep(500)
    const running = leftovers(run.marker)
    expect(running.some((p) => p.includes("bench/bare.mjs"))).toBe(true)
    expect(running.some((p) => p.includes("redis-server"))).toBe(true)
    run.child.kill("SIGINT")
    const code = await Promise.race([run.exited, sleep(15_000).then(() => "still running")])
    expect(code, run.stderr()).toBe(130)
    expect(await settled(run.marker)).toEqual([])
  }, 40_000)

  it("measures the cluster stage, with WAIT and without, on a Redis Cluster of 3 + 3 it starts, and stops every node", async () => {
    const out = outDir()
    const run = harness([
      "--duration",
      "1",
      "--warmup",
      "0",
      "--connections",
      "8",
      "--stages",
      "cluster,cluster-wait0",
      "--workloads",
      "hot",
      "--no-fiber-baseline",
      "--out",
      out
    ])
    // While the rows run, the cluster's six nodes (redis-server titles them `[cluster]`), beside the standalone node of
    // the direct baselines.
    let nodes = 0
    while (run.child.exitCode === null) {
      const servers = leftovers(run.marker).filter((p) => p.includes("redis-server"))
      nodes = Math.max(nodes, servers.filter((p) => p.includes("[cluster]")).length)
      if (nodes === 6) break
      await sleep(100)
    }
    expect(nodes, run.stderr()).toBe(6)
    const code = await run.exited
    expect(code, `${run.stdout()}\n${run.stderr()}`).toBe(0)
    const report = JSON.parse(readFileSync(join(out, "latest.json"), "utf8"))
    expect(report.rows.map((r: any) => `${r.kind}:${r.name}:${r.stage}`)).toEqual([
      "bare:bare node:http:null",
      "stage:cluster:cluster",
      "stage:cluster-wait0:cluster-wait0",
      "direct:ioredis HINCRBY:null",
      "direct:ioredis HINCRBY pipelined ×1000:null"
    ])
    const byName = new Map<string, any>(report.rows.map((r: any) => [r.name, r]))
    for (const name of ["cluster", "cluster-wait0"]) {
      const row = byName.get(name)
      expect(row.requests, name).toBeGreaterThan(0)
      expect(row.non2xx, name).toBe(0)
      expect(row.errors, name).toBe(0)
      expect(row.exitCode, name).toBe(0)
      expect(row.cpuUsPerRequest, name).toBeGreaterThan(0)
      expect(row.ratio, name).toBeCloseTo(row.rps / byName.get("bare node:http").rps, 9)
      // No peer: the cluster stage, like full, is this app's own composition.
      expect(row.peerRatio, name).toBeNull()
    }
    // REDIS_WAIT_REPLICAS unset: 1, every master having its replica; the variant sets 0. The buffered votes reach the
    // masters by the flush at exit, counted, each batch part a script and, with WAIT, one WAIT per master it went to.
    const [cluster, wait0] = ["cluster", "cluster-wait0"].map((name) => byName.get(name))
    expect(cluster.waitReplicas, JSON.stringify(cluster)).toBe(1)
    expect(cluster.settings).toBeUndefined()
    expect(wait0.waitReplicas).toBe(0)
    expect(wait0.settings).toEqual({ REDIS_WAIT_REPLICAS: "0" })
    for (const row of [cluster, wait0]) {
      const scripts = (row.redis.byCommand.evalsha ?? 0) + (row.redis.byCommand.eval ?? 0)
      expect(scripts, row.name).toBeGreaterThan(0)
      expect(row.redis.allByCommand.hincrby, `${row.name}: the counts, inside the scripts`).toBeGreaterThan(0)
    }
    expect(cluster.redis.byCommand.wait).toBeGreaterThan(0)
    expect(cluster.redis.byCommand.wait).toBeLessThanOrEqual(
      cluster.redis.byCommand.evalsha + cluster.redis.byCommand.eval
    )
    expect(wait0.redis.byCommand.wait).toBeUndefined()
    expect(report.definitions.cluster).toContain("REDIS_WAIT_REPLICAS")
    expect(run.stdout()).toMatch(/^hot\s+cluster\s+[\d,]+\s+\d+\.\d\d\s+-\s+\d+\.\d\s/m)
    expect(run.stdout()).toMatch(/^hot\s+cluster-wait0\s+[\d,]+\s+\d+\.\d\d\s+-\s+\d+\.\d\s/m)
    expect(readFileSync(join(out, "latest.svg"), "utf8")).toContain(">cluster-wait0<")
    expect(await settled(run.marker)).toEqual([])
  }, 90_000)

  it("stops the nodes of its Redis Cluster when the cluster cannot be made", async () => {
    // A PATH with everything the run needs but redis-cli, which creates the cluster once its nodes listen.
    const bin = outDir()
    for (const command of ["wrk", "redis-server", "taskset"]) {
      const found = execFileSync("sh", ["-c", `command -v ${command}`], { encoding: "utf8" }).trim()
      symlinkSync(found, join(bin, command))
    }
    const run = harness(["--duration", "1", "--stages", "cluster", "--workloads", "hot", "--out", outDir()], {
      PATH: bin
    })
    expect(await run.exited, run.stderr()).toBe(1)
    expect(run.stderr()).toMatch(
      /every node listened, then redis-cli --cluster create could not run: redis-cli is not installed/
    )
    expect(await settled(run.marker)).toEqual([])
  }, 30_000)

  it("refuses an unknown stage with the usage and starts nothing", async () => {
    const run = harness(["--stages", "memory,turbo"])
    expect(await run.exited).toBe(2)
    expect(run.stderr()).toContain("unknown turbo")
    expect(run.stderr()).toContain("--duration SECONDS")
  })

  it("says how to get wrk when it is not installed, and starts nothing", async () => {
    const run = harness(["--duration", "1", "--stages", "memory", "--workloads", "hot"], { PATH: outDir() })
    expect(await run.exited).toBe(1)
    expect(run.stderr()).toContain(Load.WRK_MISSING)
    expect(leftovers(run.marker)).toEqual([])
  })
})

describe("bench options", () => {
  it("defaults to every stage, the four throughput workloads, 10 s and 50 connections", () => {
    expect(parse([])).toEqual(defaults)
    expect(defaults).toMatchObject({ duration: 10, connections: 50, workloads: ["hot", "spread", "read", "voters"] })
    expect(defaults.stages).toEqual([
      "memory",
      "redis",
      "cached",
      "batched",
      "sharded",
      "full",
      "full-workers2",
      "cluster",
      "cluster-wait0"
    ])
  })

  it("reads lists in the canonical order and both flag spellings", () => {
    expect(parse(["--stages", "full,memory,full", "--workloads=read,hot", "--duration=3"])).toMatchObject({
      stages: ["memory", "full"],
      workloads: ["hot", "read"],
      duration: 3
    })
    expect(parse(["--help"])).toBeUndefined()
    expect(parse(["--repeat", "3"])).toMatchObject({ repeat: 3 })
    expect(defaults).toMatchObject({ pin: true, fiberBaseline: true, peers: true, threads: undefined })
    expect(parse(["--no-pin", "--no-fiber-baseline", "--no-peers"])).toMatchObject({
      pin: false,
      fiberBaseline: false,
      peers: false
    })
    expect(defaults.rateLimits).toBe(false)
    expect(parse(["--rate-limits"])).toMatchObject({ rateLimits: true })
    // Off unless measured, and then with quotas no run reaches.
    expect(envOf("full", [])).toMatchObject({ POLL_STAGE: "full", RATE_LIMIT: "off" })
    // The cluster stage names the masters as its seeds; its variant runs the same stage without WAIT.
    const masters = [7, 8, 9].map((n) => ({ url: `redis://127.0.0.1:${n}` }) as RedisNode)
    const cluster = envOf("cluster", masters)
    expect(cluster).toMatchObject({ POLL_STAGE: "cluster", REDIS_CLUSTER: masters.map((m) => m.url).join(",") })
    expect(cluster).not.toHaveProperty("REDIS_WAIT_REPLICAS")
    expect(cluster).not.toHaveProperty("REDIS_NODES")
    expect(envOf("cluster-wait0", masters)).toEqual({ ...cluster, REDIS_WAIT_REPLICAS: "0" })
    // full on two workers: full's nodes and settings, and WORKERS=2; full itself runs as one process.
    const nodes = [1, 2].map((n) => ({ url: `redis://127.0.0.1:${n}` }) as RedisNode)
    expect(envOf("full", nodes)).not.toHaveProperty("WORKERS")
    expect(envOf("full-workers2", nodes)).toEqual({ ...envOf("full", nodes), WORKERS: "2" })
    expect(parse(["--stages", "full-workers2,full"])).toMatchObject({ stages: ["full", "full-workers2"] })
    const measured = envOf("full", [], true)
    expect(measured).toMatchObject({ RATE_LIMIT: "on" })
    expect(Number(measured.RATE_LIMIT_CLIENT)).toBeGreaterThan(1e8)
    expect(Number(measured.RATE_LIMIT_VOTER)).toBeGreaterThan(1e8)
    // wrk counts its duration in whole seconds, and splits the connections between its threads.
    expect(() => parse(["--duration", "2.5"])).toThrow(/whole number/)
    expect(() => parse(["--warmup", "0.5"])).toThrow(/whole number/)
    expect(parse(["--threads", "2", "--connections", "10"])).toMatchObject({ threads: 2, connections: 10 })
    expect(() => parse(["--threads", "3"])).toThrow(/1 or 2/)
    expect(() => parse(["--threads", "2", "--connections", "7"])).toThrow(/split evenly/)
    expect(() => parse(["--repeat", "0"])).toThrow(/at least 1/)
    expect(() => parse(["--connections", "0"])).toThrow(/at least 1/)
    expect(() => parse(["--connections", "2.5"])).toThrow(/whole number/)
    expect(() => parse(["--duration"])).toThrow(/--duration/)
    expect(() => parse(["--fast"])).toThrow(/unknown option/)
  })
})

const allowedCpus = () => Pin.allowedCpus()!

describe("pinning", () => {
  it("reads taskset's CPU lists", () => {
    expect(Pin.parseCpuList("0-3,8,10-11\n")).toEqual([0, 1, 2, 3, 8, 10, 11])
    expect(Pin.parseCpuList("5")).toEqual([5])
    expect(() => Pin.parseCpuList("0-")).toThrow(/not a CPU list/)
  })

  it("gives the server the last CPU and the harness the rest, and does not pin on one CPU", () => {
    expect(Pin.plan([0])).toBeUndefined()
    expect(Pin.plan([0, 1])).toEqual({ harness: "0", server: "1" })
    expect(Pin.plan([2, 3, 6, 7])).toEqual({ harness: "2,3,6", server: "7" })
  })

  it("starts a server on its CPU alone", () => {
    const pinning = Pin.plan(allowedCpus())
    const [command, args] = Pin.serverCommand(pinning, process.execPath, [
      "-e",
      "process.stdout.write(require('fs').readFileSync('/proc/self/status','utf8').match(/Cpus_allowed_list:\\s*(.+)/)[1])"
    ])
    const cpus = execFileSync(command, args, { encoding: "utf8" })
    expect(cpus).toBe(pinning === undefined ? allowedCpus().join(",") : pinning.server)
    expect(Pin.serverCommand(undefined, "node", ["a.js"])).toEqual(["node", ["a.js"]])
  })

  it("starts a server of a primary and workers on every CPU", () => {
    const pinning = Pin.plan(allowedCpus())
    const [command, args] = Pin.serverCommand(
      pinning,
      process.execPath,
      ["-e", "process.stdout.write(JSON.stringify(require('os').availableParallelism()))"],
      true
    )
    expect(Number(execFileSync(command, args, { encoding: "utf8" }))).toBe(allowedCpus().length)
    expect(Pin.serverCommand({ harness: "0,1", server: "2" }, "node", ["a.js"], true)).toEqual([
      "taskset",
      ["-c", "0,1,2", "node", "a.js"]
    ])
  })
})

describe("a server's CPU time", () => {
  // A parent that spends next to no CPU and a child that burns some, alive, then exited and reaped by the parent.
  const parent = `
    const { spawn } = require("node:child_process")
    const child = spawn(process.execPath, ["-e", "while (process.cpuUsage().user + process.cpuUsage().system < 500000); console.log('burnt'); setInterval(() => {}, 1000)"], { stdio: ["ignore", "pipe", "inherit"] })
    child.stdout.on("data", () => console.log("burnt " + child.pid))
    child.once("exit", () => console.log("reaped"))
    process.stdin.once("data", () => child.kill())
    setInterval(() => {}, 1000)
  `

  it("counts the processes below it, alive and reaped, with children", async () => {
    const proc = spawn(process.execPath, ["-e", parent], { stdio: ["pipe", "pipe", "inherit"] })
    let out = ""
    proc.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()))
    try {
      const childPid = await eventually(async () => /burnt (\d+)/.exec(out)?.[1], {
        what: "the child's burn",
        timeoutMs: 15_000
      })
      expect(Proc.descendants(proc.pid!)).toEqual([Number(childPid)])
      const alone = Proc.sample(proc.pid!)!
      const alive = Proc.sample(proc.pid!, true)!
      const child = Proc.sample(Number(childPid))!
      expect(child.cpuSeconds).toBeGreaterThanOrEqual(0.4)
      expect(alive.cpuSeconds - alone.cpuSeconds).toBeGreaterThanOrEqual(child.cpuSeconds - 0.02)
      expect(alive.rssMb).toBeGreaterThan(alone.rssMb)
      proc.stdin.write("stop\n")
      await eventually(async () => (out.includes("reaped") ? true : undefined), {
        what: "the child's exit",
        timeoutMs: 15_000
      })
      expect(Proc.descendants(proc.pid!)).toEqual([])
      const reaped = Proc.sample(proc.pid!, true)!
      // Gone, its time is the parent's cutime/cstime: still counted with children, not without.
      expect(reaped.cpuSeconds - Proc.sample(proc.pid!)!.cpuSeconds).toBeGreaterThanOrEqual(child.cpuSeconds - 0.02)
    } finally {
      proc.kill()
    }
  })
})

describe("median run", () => {
  it("of CPU per answer is the middle one, of an even number the lower of the middle two, unread ones left out", () => {
    expect(medianLow([50, 40, 60])).toBe(50)
    expect(medianLow([50, 40, 60, 45])).toBe(45)
    expect(medianLow([null, 70, 30])).toBe(30)
    expect(medianLow([null])).toBeNull()
  })

  it("is the middle run by requests per second, of an even number the better of the middle two", () => {
    const runs = (...rps: Array<number>) => rps.map((r, i) => ({ rps: r, i }))
    expect(medianRun(runs(5))).toEqual({ rps: 5, i: 0 })
    expect(medianRun(runs(9, 3, 5))).toEqual({ rps: 5, i: 2 })
    expect(medianRun(runs(3, 9))).toEqual({ rps: 9, i: 1 })
    expect(medianRun(runs(7, 1, 8, 2))).toEqual({ rps: 7, i: 0 })
    expect(() => medianRun([])).toThrow(/no runs/)
  })
})

describe("the cluster stage's WAIT", () => {
  it("is read from the line the app logs at start, JSON or logfmt, and absent from other stages", () => {
    const line = (n: number, unset = "") =>
      `redis cluster: a flushed batch is confirmed once ${n} replica(s) hold it${unset}`
    expect(
      waitReplicasOf(
        JSON.stringify({ message: line(1, " (REDIS_WAIT_REPLICAS unset: from the cluster's shape at start)") })
      )
    ).toBe(1)
    expect(waitReplicasOf(`level=INFO msg="${line(0)}"\nlevel=INFO msg="listening"`)).toBe(0)
    expect(waitReplicasOf(`level=INFO msg="${line(2)}"`)).toBe(2)
    expect(waitReplicasOf('{"message":"livepoll starting: POLL_STAGE=full"}')).toBeUndefined()
  })
})

describe("the app's metrics during a measurement", () => {
  const totals = (text: string) => Scrape.totalsOf(parseExposition(text))
  const scrape = (buffered: number | undefined, batches: number, hits: number, misses: number) =>
    totals(
      [
        ...(buffered === undefined
          ? ["livepoll_buffer_max_entries 0"]
          : [
              "livepoll_buffer_max_entries 200000",
              `livepoll_buffered_votes{node="a"} ${buffered}`,
              `livepoll_buffered_votes{node="b"} 1`
            ]),
        `livepoll_flush_batches_total{node="a"} ${batches}`,
        // Each batch 3 ms on node a; node b's one batch, long ago, 1 ms.
        `livepoll_flush_duration_seconds_sum{node="a"} ${batches * 0.003}`,
        `livepoll_flush_duration_seconds_count{node="a"} ${batches}`,
        `livepoll_flush_duration_seconds_sum{node="b"} 0.001`,
        `livepoll_cache_hits_total{cache="results"} ${hits}`,
        `livepoll_cache_misses_total{cache="results"} ${misses}`,
        `livepoll_cache_hits_total{cache="definitions"} 7`,
        "livepoll_nodejs_eventloop_lag_p99_seconds 0.0125"
      ].join("\n")
    )

  it("reads the buffer over every node, counts flushes and lookups from the first reading, ratios since the last", () => {
    const first = scrape(10, 4, 100, 50)
    const previous = scrape(20, 5, 180, 70)
    const reading = Scrape.readingOf(1.5, scrape(30, 7, 270, 100), first, previous)
    expect(reading).toEqual({
      at: 1.5,
      bufferedVotes: 31,
      bufferedEntries: 0,
      flushBatches: 3,
      flushFailures: 0,
      flushSeconds: 0.009,
      cacheHits: 170,
      cacheMisses: 50,
      cacheHitRatio: 90 / 120,
      definitionsHitRatio: null,
      eventLoopP99Ms: 12.5
    })
    // No buffer: no buffer line and no flush line in the chart; no lookups since the last reading: no ratio.
    const unbuffered = Scrape.readingOf(2, scrape(undefined, 0, 100, 50), first, scrape(undefined, 0, 100, 50))
    expect(unbuffered).toMatchObject({ bufferedVotes: null, cacheHitRatio: null })
    expect(Scrape.pointsOf("memory", "hot", [unbuffered])).toEqual([])
    expect(Scrape.pointsOf("full", "read", [reading]).map((p) => `${p.metric}=${p.value}`)).toEqual([
      "buffered votes=31",
      "flush batches=3",
      "results cache hit ratio=0.75"
    ])
  })

  it("sums a measurement up for the table: peak buffer, flushes and their mean time, the cache's overall ratio", () => {
    const first = scrape(0, 0, 0, 0)
    const readings = [
      Scrape.readingOf(0, first, first, first),
      Scrape.readingOf(0.5, scrape(40, 0, 30, 10), first, first),
      Scrape.readingOf(1, scrape(5, 2, 60, 20), first, scrape(40, 0, 30, 10))
    ]
    const scraped = { intervalMs: 500, readings, failed: 0 }
    expect(Scrape.summaryOf(scraped)).toEqual({
      readings: 3,
      peakBufferedVotes: 41,
      flushBatches: 2,
      flushFailures: 0,
      meanFlushMs: 3,
      cacheHitRatio: 0.75,
      maxEventLoopP99Ms: 12.5
    })
    // No batch sent during the readings: no time per batch.
    expect(Scrape.summaryOf({ ...scraped, readings: readings.slice(0, 2) }).meanFlushMs).toBeNull()
    const [header, , line] = formatMetrics([{ workload: "hot", stage: "full", metrics: scraped }]).split("\n")
    const cells = (text: string) => text!.trim().split(/\s{2,}/)
    expect(cells(header!)).toHaveLength(cells(line!).length)
    expect(cells(line!)).toEqual(["hot", "full", "3", "41", "2", "0", "3.00", "0.750", "12.5"])
  })
})

describe("memory check table", () => {
  it("has a heading for every column", () => {
    const use = {
      perThousand: 1002.3,
      scriptsPerThousand: 0,
      allPerThousand: 2004.3,
      byCommand: null,
      allByCommand: {}
    }
    const check = {
      stage: "batched",
      votes: 1_000_000,
      distinctPolls: 1_000_000,
      seconds: 200,
      rps: 5000,
      latencyMs: { p50: 1, p99: 30, max: 90, mean: 2 },
      non2xx: 0,
      errors: 0,
      startMb: 129,
      middleMb: 412,
      endMb: 469,
      peakMb: 517,
      redis: use,
      timeline: [],
      otherCores: 0,
      exitCode: 0
    }
    const [header, , line] = formatRss([check]).split("\n")
    const cells = (text: string) => text!.trim().split(/\s{2,}/)
    expect(cells(header!)).toHaveLength(cells(line!).length)
    expect(cells(line!)).toEqual([
      "batched",
      "1,000,000",
      "5,000",
      "30.00",
      "0",
      "129",
      "412",
      "469",
      "517",
      "1002.30",
      "2004.30",
      "0.00"
    ])
  })
})

describe("Redis command counts", () => {
  const info = (lines: Record<string, number>) =>
    `# Commandstats\r\n${Object.entries(lines)
      .map(([name, calls]) => `cmdstat_${name}:calls=${calls},usec=1,usec_per_call=0.5,rejected_calls=0,failed_calls=0`)
      .join("\r\n")}\r\n`

  it("counts what changed per 1,000 requests, scripts apart, leaving out the harness's own commands", () => {
    const before = Commandstats.parse(info({ evalsha: 10, hincrby: 10, info: 3 }))
    const after = Commandstats.parse(
      info({ evalsha: 12, hincrby: 16, hgetall: 1, info: 9, quit: 1, "client|setname": 2, flushall: 1, replconf: 5 })
    )
    const sent = new Map([
      ["evalsha", 2],
      ["hgetall", 1],
      ["echo", 2]
    ])
    expect(Commandstats.use(before, after, 2000, sent)).toEqual({
      perThousand: 1.5,
      scriptsPerThousand: 1,
      allPerThousand: 4.5,
      byCommand: { evalsha: 1, hgetall: 0.5 },
      allByCommand: { evalsha: 1, hincrby: 3, hgetall: 0.5 }
    })
    expect(Commandstats.use(before, after, 2000).perThousand).toBeNull()
  })

  describe("against a real redis-server", () => {
    let redis: RedisServer
    beforeAll(async () => {
      redis = await startRedis()
    })
    afterAll(async () => {
      await redis?.stop()
    })

    it("MONITOR counts what clients send, a script once, and commandstats everything it ran", async () => {
      const admin = redis.client()
      const app = redis.client()
      await app.hincrby("before", "a", 1)
      const before = await Commandstats.read(admin)
      const watch = await Monitor.watch(redis.port, admin)
      const script = "redis.call('HINCRBY', KEYS[1], 'a', 1); redis.call('HINCRBY', KEYS[1], 'b', 1); return 1"
      await app.eval(script, 1, "poll:{m}:counts")
      await app.eval(script, 1, "poll:{m}:counts")
      await app.hgetall("poll:{m}:counts")
      const sent = await watch.stop()
      await app.hincrby("after", "a", 1)
      const use = Commandstats.use(before, await Commandstats.read(admin), 3, sent)
      expect(use.byCommand).toEqual({ eval: 666.667, hgetall: 333.333 })
      expect(use.perThousand).toBe(1000)
      // Four HINCRBYs inside the scripts, and the one sent after the watch stopped: commandstats was read after it,
      // MONITOR's count ends at the watch's end.
      expect(use.allByCommand).toEqual({ eval: 666.667, hincrby: 1666.667, hgetall: 333.333 })
      expect(use.scriptsPerThousand).toBe(666.667)
    })
  })
})

describe("wrk's summary", () => {
  const line = (fields: Record<string, unknown>) =>
    `${Load.SUMMARY_PREFIX}${JSON.stringify({
      requests: 1200,
      duration_us: 2_000_000,
      threads: 1,
      connections: 8,
      non2xx: { "404": 150, "503": 50 },
      errors: { connect: 1, read: 2, write: 3, timeout: 4, status: 200 },
      wrk_latency_ms: { p50: 1.5, p99: 9, max: 12, mean: 2 },
      latency_ms: { p50: 1.2, p99: 6, max: 12, mean: 1.6, count: 1200 },
      histogram: "ffi",
      cpu_s: 0.5,
      ...fields
    })}`
  const output = (summary: string) =>
    `Running 2s test @ http://127.0.0.1:1234\n  1 threads and 8 connections\nRequests/sec: 600.00\n${summary}\n`

  it("is read from the script's line among wrk's own, and gives the 2xx rate, errors and wrk's CPU", () => {
    const summary = Load.parseSummary(output(line({})))
    expect(summary).toMatchObject({ requests: 1200, seconds: 2, threads: 1, connections: 8, cpuSeconds: 0.5 })
    expect(summary.non2xx).toEqual({ "404": 150, "503": 50 })
    expect(summary.latencyMs).toEqual({ p50: 1.2, p99: 6, max: 12, mean: 1.6, count: 1200, p99Corrected: 9 })
    const load = Load.loadOf(summary)
    expect(load).toMatchObject({ ok: 1000, non2xx: 200, errors: 10, seconds: 2, rps: 500, loadCores: 0.25 })
    expect(load.non2xxByStatus).toEqual({ "404": 150, "503": 50 })
    expect(load.latencyMs.p99).toBe(6)
  })

  it("falls back to wrk's own latencies when the script could not read its histogram back", () => {
    const load = Load.loadOf(Load.parseSummary(output(line({ latency_ms: null, histogram: "wrk" }))))
    expect(load.latencyMs).toEqual({ p50: 1.5, p99: 9, max: 12, mean: 2 })
  })

  it("is refused, quoting wrk's output, when missing or not whole", () => {
    expect(() => Load.parseSummary("Running 2s test\nunable to connect to 127.0.0.1:1 Connection refused\n")).toThrow(
      /printed no summary[\s\S]*Connection refused/
    )
    expect(() => Load.parseSummary(`${Load.SUMMARY_PREFIX}{"requests":`)).toThrow(/not JSON/)
    expect(() => Load.parseSummary(line({ cpu_s: "fast" }))).toThrow(/cpu_s/)
    expect(() => Load.parseSummary(line({ non2xx: { teapot: 1 } }))).toThrow(/non2xx/)
    expect(() => Load.parseSummary(line({ histogram: undefined }))).toThrow(/histogram/)
  })
})

describe("figures relative to others of the same run", () => {
  const row = (kind: string, name: string, stage: string | null, rps: number, cpuCores: number | null) =>
    ({ kind, name, stage, rps, cpuCores }) as any

  it("CPU per answer is the server's cores over its rate, in microseconds", () => {
    expect(microsPerRequest(0.98, 40_000)).toBeCloseTo(24.5, 9)
    expect(microsPerRequest(null, 40_000)).toBeNull()
    expect(microsPerRequest(0.5, 0)).toBeNull()
    expect(ratioTo(3, 4)).toBe(0.75)
    expect(ratioTo(3, 0)).toBeNull()
    expect(ratioTo(null, 4)).toBeNull()
  })

  it("relates every row to the bare server and each stage of the app to its own peer", () => {
    const bare = row("bare", "bare node:http", null, 40_000, 1)
    const rows = relate(bare, [
      bare,
      row("stage", "batched", "batched", 30_000, 0.99),
      row("peer", "fastify batched", "batched", 20_000, 0.9),
      row("stage", "redis", "redis", 10_000, 0.5),
      row("peer", "fastify redis", "redis", 12_500, 0.5),
      row("stage", "full", "full", 28_000, 1),
      row("direct", "ioredis HINCRBY", null, 80_000, null)
    ])
    const by = new Map(rows.map((r) => [r.name, r]))
    expect(by.get("bare node:http")).toMatchObject({ ratio: 1, peerRatio: null, cpuUsPerRequest: 25 })
    expect(by.get("batched")).toMatchObject({ ratio: 0.75, peerRatio: 1.5, cpuUsPerRequest: 33 })
    expect(by.get("batched")!.peerCpuRatio).toBeCloseTo(33 / 45, 9)
    expect(by.get("fastify batched")).toMatchObject({ ratio: 0.5, peerRatio: null, peerCpuRatio: null })
    expect(by.get("redis")).toMatchObject({ peerRatio: 0.8, peerCpuRatio: 1.25 })
    // No peer of its own: `full` is this app's composition.
    expect(by.get("full")).toMatchObject({ ratio: 0.7, peerRatio: null, peerCpuRatio: null })
    expect(by.get("ioredis HINCRBY")).toMatchObject({ ratio: 2, cpuUsPerRequest: null })
  })

  it("says whether the bare server filled its core", () => {
    const bare = (cpuCores: number) =>
      ({
        kind: "bare",
        name: "bare node:http",
        workload: "hot",
        rps: 45_000,
        cpuCores,
        loadCores: 0.4,
        otherCores: 0
      }) as any
    expect(bareCheck([bare(0.99)])).toEqual([
      "hot: bare node:http kept 0.99 of its core busy at 45,000 req/s (wrk used 0.40 cores, 8.9 µs per request): the server, not the load generator, is the limit"
    ])
    expect(bareCheck([bare(0.6)])[0]).toMatch(/^hot: bare node:http kept only 0\.60 of its core busy .*flattered$/)
  })
})

describe("the load", () => {
  interface Seen {
    readonly method: string
    readonly path: string
    readonly body: string
  }
  let server: Server
  let url: string
  let seen: Array<Seen> = []
  /** How the test server answers each request, given how many it has answered before. */
  let answer: (n: number, res: ServerResponse) => void = (_n, res) => res.end("{}")

  beforeAll(async () => {
    server = createServer((req, res) => {
      let body = ""
      req.on("data", (chunk: Buffer) => (body += chunk.toString()))
      req.on("end", () => {
        seen.push({ method: req.method!, path: req.url!, body })
        answer(seen.length - 1, res)
      })
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  })
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())))
  const fresh = (reply: (n: number, res: ServerResponse) => void = (_n, res) => res.end("{}")) => {
    seen = []
    answer = reply
  }
  const drive = (workload: Workload, options: Partial<Load.DriveOptions> = {}) =>
    Load.drive(url, workload, { connections: 4, threads: 1, seconds: 1, ...options })

  it("hot: votes on one poll, the options in turn", async () => {
    fresh()
    const load = await drive("hot")
    // Answers still in flight when wrk stopped reached the server but were not counted.
    expect(load.ok).toBeLessThanOrEqual(seen.length)
    expect(load.ok).toBeGreaterThanOrEqual(seen.length - 4)
    expect(load.summary.latencyMs?.count, "every answer measured once").toBe(load.summary.requests)
    expect(new Set(seen.map((s) => `${s.method} ${s.path}`))).toEqual(new Set(["POST /vote/hot"]))
    const options = new Map<string, number>()
    for (const s of seen)
      options.set(JSON.parse(s.body).option_id, (options.get(JSON.parse(s.body).option_id) ?? 0) + 1)
    expect([...options.keys()].sort()).toEqual(["A", "B", "C", "D"])
    for (const count of options.values()) expect(Math.abs(count - seen.length / 4)).toBeLessThanOrEqual(8)
  })

  it("spread: votes over 10,000 polls; read: GETs one poll's results", async () => {
    fresh()
    await drive("spread")
    const polls = new Set(seen.map((s) => s.path))
    for (const path of polls) expect(path).toMatch(/^\/vote\/p\d+$/)
    expect(Math.max(...[...polls].map((p) => Number(p.slice("/vote/p".length))))).toBeLessThan(Load.SPREAD_POLLS)
    expect(polls.size).toBeGreaterThan(Math.min(seen.length, Load.SPREAD_POLLS) / 3)
    fresh()
    const load = await drive("read")
    expect(load.ok).toBeGreaterThan(0)
    expect(new Set(seen.map((s) => `${s.method} ${s.path} ${s.body}`))).toEqual(new Set(["GET /results/hot "]))
  })

  it("voters: a new voter every request, from each of two threads", async () => {
    fresh()
    const load = await drive("voters", { threads: 2 })
    expect(load.summary.threads).toBe(2)
    const voters = seen.map((s) => JSON.parse(s.body).voter_id as string)
    expect(new Set(seen.map((s) => s.path))).toEqual(new Set(["/vote/voters"]))
    expect(new Set(voters).size).toBe(voters.length)
    // Ids carry their thread: both threads sent.
    expect(new Set(voters.map((v) => v.split("-").at(-2))).size).toBe(2)
    // A second run hands out none of the first's.
    const first = new Set(voters)
    fresh()
    await drive("voters")
    expect(seen.some((s) => first.has(JSON.parse(s.body).voter_id))).toBe(false)
  })

  it("spread1m: each of its polls voted on once, then stops well before its time bound", async () => {
    fresh()
    const polls = 3000
    const running = Load.start(url, "spread1m", { connections: 8, threads: 2, seconds: 30, distinctPolls: polls })
    const load = await running.done
    expect(load.ok).toBe(polls)
    expect(running.completed()).toBe(polls)
    expect(load.seconds).toBeLessThan(15)
    expect(seen).toHaveLength(polls)
    expect(new Set(seen.map((s) => s.path))).toEqual(new Set(Array.from({ length: polls }, (_, i) => `/vote/m${i}`)))
  }, 30_000)

  it("counts answers that are not 2xx by status", async () => {
    fresh((n, res) => {
      res.statusCode = n % 5 === 0 ? 503 : n % 7 === 0 ? 404 : 200
      res.end("{}")
    })
    const load = await drive("hot")
    const expected = { "503": 0, "404": 0 }
    for (let n = 0; n < load.summary.requests; n++) {
      if (n % 5 === 0) expected["503"]++
      else if (n % 7 === 0) expected["404"]++
    }
    // Answers still in flight when wrk stopped were sent by the server but not counted by wrk.
    expect(load.non2xxByStatus["503"]).toBeGreaterThanOrEqual(expected["503"] - 4)
    expect(load.non2xxByStatus["503"]).toBeLessThanOrEqual(expected["503"] + 4)
    expect(load.non2xxByStatus["404"]).toBeGreaterThanOrEqual(expected["404"] - 4)
    expect(load.non2xxByStatus["404"]).toBeLessThanOrEqual(expected["404"] + 4)
    expect(load.ok).toBe(load.summary.requests - load.non2xx)
  })

  it("reports the latencies measured, without the samples wrk makes up for slow answers", async () => {
    // One answer in ten takes 20 ms, the rest none: wrk's correction would add up to ten made-up samples for each
    // slow one, between the fast and the slow, moving the median and the mean up.
    fresh((n, res) => (n % 10 === 9 ? setTimeout(() => res.end("{}"), 20) : res.end("{}")))
    const load = await drive("hot")
    const measured = load.summary.latencyMs!
    // Read in place: the scan bucket by bucket is only the fallback.
    expect(load.summary.histogram).toBe("ffi")
    expect(measured.count).toBe(load.summary.requests)
    expect(measured.p50).toBeLessThan(5)
    expect(measured.p99).toBeGreaterThanOrEqual(19)
    expect(measured.max).toBeGreaterThanOrEqual(19)
    expect(load.summary.wrkLatencyMs.mean).toBeGreaterThan(measured.mean * 1.5)
    expect(measured.p99Corrected).toBe(load.summary.wrkLatencyMs.p99)
  })
})
