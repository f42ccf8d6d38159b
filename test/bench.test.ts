import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Commandstats from "../bench/commandstats.js"
import * as Monitor from "../bench/monitor.js"
import { defaults, parse } from "../bench/options.js"
import * as Pin from "../bench/pin.js"
import { formatRss, medianRun } from "../bench/report.js"
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

const harness = (args: ReadonlyArray<string>): Run => {
  const marker = { id: randomUUID(), tmp: outDir() }
  const child = spawn(process.execPath, ["--import", "tsx", "bench/run.ts", ...args], {
    env: { ...process.env, [MARKER]: marker.id, TMPDIR: marker.tmp },
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

describe("npm run bench", () => {
  it("measures each stage against the baselines, writes the JSON and the chart, and leaves no process behind", async () => {
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
      "stage:batched:hot",
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
    // Server alone on the last CPU, the harness (load, Redis) on the others; on one CPU nothing to split.
    expect(report.machine.pinning).toEqual(Pin.plan(allowedCpus()) ?? null)
    expect(report.machine.cores).toBe(allowedCpus().length)
    // Measured before and after the stages; the better run is the baseline.
    expect(bare.runs).toHaveLength(2)
    expect(bare.rps).toBe(Math.max(...bare.runs))
    expect(byName.get("batched").runs).toEqual([byName.get("batched").rps])
    expect(byName.get("bare + Effect fiber").runs).toEqual([byName.get("bare + Effect fiber").rps])
    expect(run.stdout()).toMatch(/^hot bare node:http: runs of [\d,]+, [\d,]+ req\/s; the row is the median$/m)
    for (const name of ["bare node:http", "bare + Effect fiber", "memory", "batched"]) {
      const row = byName.get(name)
      expect(row.latencyMs.p50, name).toBeGreaterThan(0)
      expect(row.latencyMs.p99, name).toBeGreaterThanOrEqual(row.latencyMs.p50)
      expect(row.latencyMs.max, name).toBeGreaterThanOrEqual(row.latencyMs.p99)
      expect(row.peakRssMb, name).toBeGreaterThan(10)
      expect(row.exitCode, `${name} stops cleanly on SIGTERM`).toBe(0)
    }
    // Memory touches no Redis; the batched stage's buffered votes reach Redis by the flush at exit, which is counted.
    expect(byName.get("memory").redis).toBeNull()
    const batched = byName.get("batched").redis
    expect(batched.perThousand).toBeGreaterThan(0)
    expect(batched.allPerThousand).toBeGreaterThanOrEqual(batched.perThousand)
    expect(byName.get("ioredis HINCRBY").redis.byCommand.hincrby).toBeCloseTo(1000, 0)

    expect(run.stdout()).toMatch(/req\/s\s+× bare/)
    expect(run.stdout()).toMatch(/^hot\s+batched\s+[\d,]+\s+\d+\.\d\d/m)

    const svg = readFileSync(join(out, "latest.svg"), "utf8")
    expect(svg.startsWith("<svg")).toBe(true)
    expect(svg.trimEnd().endsWith("</svg>")).toBe(true)
    for (const label of ["memory", "batched", "bare node:http"]) expect(svg).toContain(`>${label}<`)
    expect(svg.split(">target 0.7×<").length, "the target line's label, drawn once").toBe(2)

    expect(await settled(run.marker)).toEqual([])
  }, 60_000)

  it("measures one vote per voter: a defined poll, a new voter each request, one script per vote", async () => {
    const out = outDir()
    const args = ["--duration", "1", "--warmup", "0", "--connections", "8", "--stages", "batched"]
    // Without the fiber baseline: bare, the stage and the direct baselines only.
    const run = harness([...args, "--repeat", "2", "--workloads", "voters", "--no-fiber-baseline", "--out", out])
    const code = await run.exited
    expect(code, `${run.stdout()}\n${run.stderr()}`).toBe(0)
    const report = JSON.parse(readFileSync(join(out, "latest.json"), "utf8"))
    expect(report.rows.map((r: any) => `${r.kind}:${r.name}:${r.workload}`)).toEqual([
      "bare:bare node:http:voters",
      "stage:batched:voters",
      "direct:ioredis SADD+HINCRBY:voters",
      "direct:ioredis SADD+HINCRBY pipelined ×1000:voters"
    ])
    for (const row of report.rows) {
      expect(row.requests, row.name).toBeGreaterThan(0)
      // Every request is a new voter's: a refusal would mean ids repeat, or the poll was not defined.
      expect(row.non2xx, row.name).toBe(0)
    }
    const [bare, stage, direct, pipelined] = report.rows
    // Two rounds, and the bare server once more: each row is its median run (of two, the better).
    expect(bare.runs).toHaveLength(3)
    expect(bare.rps).toBe([...bare.runs].sort((a: number, b: number) => a - b)[1])
    expect(stage.runs).toHaveLength(2)
    expect(stage.rps).toBe(Math.max(...stage.runs))
    expect(stage.ratio).toBeCloseTo(stage.rps / bare.rps, 9)
    // Each vote is one script before its 200: the voter's record and the count together (EVALSHA; EVAL the first
    // time a connection meets the script).
    const scripts = (stage.redis.byCommand.evalsha ?? 0) + (stage.redis.byCommand.eval ?? 0)
    expect(scripts).toBeGreaterThanOrEqual(999)
    expect(scripts).toBeLessThan(1010)
    expect(stage.redis.byCommand.sadd ?? 0).toBe(0)
    // Anything else is a handful of commands (the definition, the flush), not one more per vote.
    expect(stage.redis.perThousand - scripts).toBeLessThan(100)
    for (const row of [direct, pipelined]) {
      expect(row.redis.byCommand.sadd, row.name).toBeCloseTo(1000, 0)
      expect(row.redis.byCommand.hincrby, row.name).toBeCloseTo(1000, 0)
    }
    expect(await settled(run.marker)).toEqual([])
  }, 60_000)

  it("stops the load and every process it started on Ctrl-C", async () => {
    const run = harness(["--duration", "30", "--stages", "batched", "--workloads", "hot", "--out", outDir()])
    // Interrupt mid-measurement: the first server measured is the bare node:http one, with Redis already up.
    const deadline = Date.now() + 20_000
    while (!leftovers(run.marker).some((p) => p.includes("bench/bare.ts"))) {
      if (Date.now() > deadline) throw new Error(`the bare server never started:\n${run.stderr()}`)
      await sleep(50)
    }
    await sleep(500)
    expect(leftovers(run.marker).some((p) => p.includes("redis-server"))).toBe(true)
    run.child.kill("SIGINT")
    const code = await Promise.race([run.exited, sleep(15_000).then(() => "still running")])
    expect(code, run.stderr()).toBe(130)
    expect(await settled(run.marker)).toEqual([])
  }, 40_000)

  it("refuses an unknown stage with the usage and starts nothing", async () => {
    const run = harness(["--stages", "memory,turbo"])
    expect(await run.exited).toBe(2)
    expect(run.stderr()).toContain("unknown turbo")
    expect(run.stderr()).toContain("--duration SECONDS")
  })
})

describe("bench options", () => {
  it("defaults to every stage, the four throughput workloads, 10 s and 50 connections", () => {
    expect(parse([])).toEqual(defaults)
    expect(defaults).toMatchObject({ duration: 10, connections: 50, workloads: ["hot", "spread", "read", "voters"] })
    expect(defaults.stages).toEqual(["memory", "redis", "cached", "batched", "sharded", "full"])
  })

  it("reads lists in the canonical order and both flag spellings", () => {
    expect(parse(["--stages", "full,memory,full", "--workloads=read,hot", "--duration=2.5"])).toMatchObject({
      stages: ["memory", "full"],
      workloads: ["hot", "read"],
      duration: 2.5
    })
    expect(parse(["--help"])).toBeUndefined()
    expect(parse(["--repeat", "3"])).toMatchObject({ repeat: 3 })
    expect(defaults).toMatchObject({ pin: true, fiberBaseline: true })
    expect(parse(["--no-pin", "--no-fiber-baseline"])).toMatchObject({ pin: false, fiberBaseline: false })
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
})

describe("median run", () => {
  it("is the middle run by requests per second, of an even number the better of the middle two", () => {
    const runs = (...rps: Array<number>) => rps.map((r, i) => ({ rps: r, i }))
    expect(medianRun(runs(5))).toEqual({ rps: 5, i: 0 })
    expect(medianRun(runs(9, 3, 5))).toEqual({ rps: 5, i: 2 })
    expect(medianRun(runs(3, 9))).toEqual({ rps: 9, i: 1 })
    expect(medianRun(runs(7, 1, 8, 2))).toEqual({ rps: 7, i: 0 })
    expect(() => medianRun([])).toThrow(/no runs/)
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
      info({ evalsha: 12, hincrby: 16, hgetall: 1, info: 9, quit: 1, "client|setname": 2, flushall: 1 })
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
