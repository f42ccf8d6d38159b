/**
 * The HTTP load: wrk (a C load generator) on the harness's CPUs, with a Lua script written for each run that builds
 * the workload's requests, counts non-2xx answers by status and prints a JSON summary when wrk is done.
 */
import { spawnSync } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { Workload } from "./options.js"
import * as Processes from "./processes.js"

export const HOT_POLL = "hot"
export const SPREAD_POLLS = 10_000
/** The defined poll of the `voters` workload: one vote per voter, options as OPTIONS. */
export const VOTERS_POLL = "voters"
/** A few options per poll, so a hot poll's hash has several fields, as a real poll would. */
export const OPTIONS = ["A", "B", "C", "D"] as const

/** The body that defines VOTERS_POLL (POST /api/v1/polls). */
export const votersPoll = JSON.stringify({
  id: VOTERS_POLL,
  question: "Which one?",
  options: OPTIONS.map((id) => ({ id, label: `Option ${id}` })),
  one_vote_per_voter: true
})

/** A tag no earlier call has handed out, in this process or an earlier run against the same Redis. */
const runTag = (() => {
  let next = 0
  return () => `${process.pid.toString(36)}${Date.now().toString(36)}${(next++).toString(36)}`
})()

/** Voter ids that no earlier call has handed out, in this process or an earlier run against the same Redis. */
export const newVoters = () => {
  const run = runTag()
  let next = 0
  return () => `v${run}-${(next++).toString(36)}`
}

/** The line of wrk's output that carries the script's summary. */
export const SUMMARY_PREFIX = "LIVEPOLL_WRK "

/** CPU seconds the script may spend reading wrk's histogram back before it keeps wrk's own percentiles. */
const UNCORRECT_CPU_S = 5

export interface ScriptSettings {
  /** wrk's -c and -t, which the script must know to undo wrk's latency correction and to split the polls. */
  readonly connections: number
  readonly threads: number
  /** Distinct polls of `spread1m`, each voted on once. */
  readonly distinctPolls: number
  /** wrk's -d: `spread1m` holds a connection past its last vote for longer than this. */
  readonly seconds: number
  /** Unique to this run: voter ids are built on it. */
  readonly run: string
}

const lua = (text: string) => JSON.stringify(text)

/** Per workload: what each request is. `post(path, body)` builds a POST with a JSON body. */
const requestsOf = (workload: Workload): string => {
  switch (workload) {
    case "hot":
      // Prebuilt: the four requests, cycled.
      return `
local hot = {}
function start()
  for i, option in ipairs(OPTIONS) do hot[i] = post("/vote/" .. HOT_POLL, body(option)) end
end
function request()
  n = n % #hot + 1
  return hot[n]
end`
    case "spread":
      return `
function request()
  n = n % #OPTIONS + 1
  return post("/vote/p" .. math.random(0, SPREAD_POLLS - 1), body(OPTIONS[n]))
end`
    case "read":
      // No request(): wrk sends this one request, built once.
      return `
wrk.method = "GET"
wrk.path = "/results/" .. HOT_POLL`
    case "voters":
      // Ids unique to this run and thread: a refusal (409) would mean they repeat.
      return `
function request()
  n = n + 1
  local voter = RUN .. "-" .. index .. "-" .. n
  return post("/vote/" .. VOTERS_POLL, '{"option_id":"' .. OPTIONS[n % #OPTIONS + 1] .. '","voter_id":"' .. voter .. '"}')
end`
    case "spread1m":
      // Thread t of T votes on polls t, t+T, t+2T, ... below DISTINCT_POLLS, each once, then stops. wrk has no
      // request count of its own: delay() lets a connection send only while the thread's share is not all sent
      // (and holds it past wrk's -d after that), and the last answer stops the thread. wrk calls request() once
      // before the run to check what it returns; only delay() tells the run has begun.
      return `
local share, reserved, sent, answered, running = 0, 0, 0, 0, false
ok = 0
function start()
  if index < DISTINCT_POLLS then share = math.floor((DISTINCT_POLLS - 1 - index) / THREADS) + 1 end
end
function delay()
  running = true
  if reserved < share then
    reserved = reserved + 1
    return 0
  end
  return HOLD_MS
end
function request()
  local poll = index
  if running then
    poll = index + sent * THREADS
    sent = sent + 1
  end
  n = n % #OPTIONS + 1
  return post("/vote/m" .. poll, body(OPTIONS[n]))
end
function answered_one(status)
  answered = answered + 1
  if status >= 200 and status < 300 then ok = ok + 1 end
  if answered % 1000 == 0 then io.stderr:write("progress " .. index .. " " .. ok .. "\\n") end
  if answered == share then
    io.stderr:write("finished " .. index .. " " .. ok .. "\\n")
    wrk.thread:stop()
  end
end`
  }
}

/**
 * The Lua script of one wrk run. setup() and done() run in wrk's main Lua state; init(), delay(), request() and
 * response() in each thread's own, which done() reads back with thread:get.
 */
export const script = (
  workload: Workload,
  s: ScriptSettings
): string => `-- ${workload} load for the livepoll bench (bench/load.ts), for wrk -t ${s.threads} -c ${s.connections}
local CONNECTIONS = ${s.connections}
THREADS = ${s.threads}
RUN = ${lua(s.run)}
OPTIONS = { ${OPTIONS.map(lua).join(", ")} }
HOT_POLL = ${lua(HOT_POLL)}
VOTERS_POLL = ${lua(VOTERS_POLL)}
SPREAD_POLLS = ${SPREAD_POLLS}
DISTINCT_POLLS = ${s.distinctPolls}
HOLD_MS = ${(Math.ceil(s.seconds) + 60) * 1000}

local threads = {}
function setup(thread)
  thread:set("index", #threads)
  threads[#threads + 1] = thread
end

-- Each thread's own state.
index = 0
n = 0
non2xx = {}
local head
function post(path, payload)
  return "POST " .. path .. " HTTP/1.1\\r\\n" .. head .. "Content-Length: " .. #payload .. "\\r\\n\\r\\n" .. payload
end
function body(option)
  return '{"option_id":"' .. option .. '"}'
end
function start() end
function answered_one(status) end
${requestsOf(workload)}

function init(args)
  head = "Host: " .. wrk.headers["Host"] .. "\\r\\nContent-Type: application/json\\r\\n"
  math.randomseed(os.time() + index * 7919)
  start()
end

function response(status, headers, payload)
  if status < 200 or status > 299 then non2xx[status] = (non2xx[status] or 0) + 1 end
  answered_one(status)
end

-- wrk adds made-up samples to its latency histogram before done(): for each answer slower than twice the mean
-- interval e between a connection's requests, one at each of its latency - e, - 2e, ... down to e (stats_correct in
-- wrk.c, a correction for coordinated omission). Each corrected bucket v > e holds its own count plus those of
-- v + e, v + 2e, ..., so the measured count of v is corrected(v) - corrected(v + e). Undone here, so percentiles are
-- of the answers measured, as a closed-loop client sees them; wrk's own are printed beside them.
-- The histogram's buckets, lowest first. Read in place through LuaJIT's FFI (wrk's stats struct: count, limit, min,
-- max, then one count per microsecond), checked against what wrk's own accessors say of it; failing that, through
-- latency(i), which scans from the histogram's start on every call, for at most UNCORRECT_CPU_S.
local function buckets(latency)
  local values, counts = {}, {}
  local read = pcall(function()
    local ffi = require("ffi")
    ffi.cdef("typedef struct { uint64_t count, limit, min, max; } livepoll_stats;")
    local stats = ffi.cast("livepoll_stats **", latency)[0]
    local min, max, total = tonumber(stats.min), tonumber(stats.max), 0
    if min ~= latency.min or max ~= latency.max then error("not wrk's stats layout") end
    local data = ffi.cast("uint64_t *", stats) + 4
    for v = min, max do
      local c = tonumber(data[v])
      if c > 0 then
        values[#values + 1], counts[#counts + 1], total = v, c, total + c
      end
    end
    if total ~= tonumber(stats.count) or #values ~= #latency then error("not wrk's stats layout") end
  end)
  if read then return values, counts, "ffi" end
  values, counts = {}, {}
  local deadline = os.clock() + ${UNCORRECT_CPU_S}
  for i = 1, #latency do
    if i % 64 == 0 and os.clock() > deadline then return nil end
    values[i], counts[i] = latency(i)
  end
  return values, counts, "scan"
end

local function measured(summary, latency)
  local values, counts, how = buckets(latency)
  if values == nil then return nil end
  local at = {}
  for i = 1, #values do at[values[i]] = counts[i] end
  local per = math.floor(summary.requests / CONNECTIONS)
  local e = per > 0 and math.floor(summary.duration / per) or 0
  if e > 0 then
    for i = 1, #values do
      if values[i] > e then counts[i] = counts[i] - (at[values[i] + e] or 0) end
    end
  end
  local total, sum, max = 0, 0, 0
  for i = 1, #values do
    if counts[i] > 0 then
      total, sum, max = total + counts[i], sum + values[i] * counts[i], values[i]
    end
  end
  -- The rank wrk's stats_percentile uses: round(p / 100 * count + 0.5).
  local function percentile(p)
    local rank, seen = math.floor(p / 100 * total + 1), 0
    for i = 1, #values do
      seen = seen + counts[i]
      if seen >= rank then return values[i] end
    end
    return 0
  end
  return { p50 = percentile(50), p99 = percentile(99), max = max, mean = total > 0 and sum / total or 0, count = total, how = how }
end

local function ms(us)
  return string.format("%.3f", us / 1000)
end

function done(summary, latency, requests)
  -- clock(): CPU time of the whole wrk process, every thread, so far; read before the work below.
  local cpu = os.clock()
  local statuses, codes = {}, {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("non2xx")) do statuses[status] = (statuses[status] or 0) + count end
  end
  for status, count in pairs(statuses) do codes[#codes + 1] = string.format('"%d":%d', status, count) end
  local m = measured(summary, latency)
  local errors = summary.errors
  local fields = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"threads":%d,"connections":%d', THREADS, CONNECTIONS),
    '"non2xx":{' .. table.concat(codes, ",") .. "}",
    string.format('"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d}',
      errors.connect, errors.read, errors.write, errors.timeout, errors.status),
    string.format('"wrk_latency_ms":{"p50":%s,"p99":%s,"max":%s,"mean":%s}',
      ms(latency:percentile(50)), ms(latency:percentile(99)), ms(latency.max), ms(latency.mean)),
    m and string.format('"latency_ms":{"p50":%s,"p99":%s,"max":%s,"mean":%s,"count":%d},"histogram":"%s"',
      ms(m.p50), ms(m.p99), ms(m.max), ms(m.mean), m.count, m.how) or '"latency_ms":null,"histogram":"wrk"',
    string.format('"cpu_s":%.3f', cpu)
  }
  io.write("${SUMMARY_PREFIX}{" .. table.concat(fields, ",") .. "}\\n")
  io.flush()
end
`

export interface Latency {
  readonly p50: number
  readonly p99: number
  readonly max: number
  readonly mean: number
  /** wrk's own p99, with the made-up samples of its coordinated-omission correction. */
  readonly p99Corrected?: number
}

/** What the script's done() printed. Latencies in milliseconds. */
export interface Summary {
  /** Answers of any status. */
  readonly requests: number
  readonly seconds: number
  readonly threads: number
  readonly connections: number
  /** Answers that were not 2xx, by status. */
  readonly non2xx: Readonly<Record<string, number>>
  readonly errors: {
    readonly connect: number
    readonly read: number
    readonly write: number
    readonly timeout: number
  }
  /** Of every answer as measured; null where the histogram took too long to read back (see `script`). */
  readonly latencyMs: (Latency & { readonly count: number }) | null
  /** How the script read wrk's histogram: in place (`ffi`), bucket by bucket (`scan`), or not at all (`wrk`). */
  readonly histogram: "ffi" | "scan" | "wrk"
  /** wrk's own figures, its correction included. */
  readonly wrkLatencyMs: Latency
  /** CPU seconds wrk used, all threads, start-up included. */
  readonly cpuSeconds: number
}

const isNumber = (v: unknown): v is number => typeof v === "number" && Number.isFinite(v)

const numbers = <K extends string>(what: string, v: unknown, keys: ReadonlyArray<K>): Record<K, number> => {
  const o = (typeof v === "object" && v !== null ? v : {}) as Record<string, unknown>
  for (const k of keys) if (!isNumber(o[k])) throw new Error(`wrk's summary has no number ${what}.${k}`)
  return Object.fromEntries(keys.map((k) => [k, o[k] as number])) as Record<K, number>
}

const LATENCY = ["p50", "p99", "max", "mean"] as const

/** The script's summary from wrk's output; throws, quoting the output, when it is not there or not whole. */
export const parseSummary = (output: string): Summary => {
  const line = output
    .split("\n")
    .reverse()
    .find((l) => l.startsWith(SUMMARY_PREFIX))
  if (line === undefined) {
    throw new Error(
      `wrk printed no summary (its script failed, or wrk did):\n${output.split("\n").slice(-20).join("\n")}`
    )
  }
  let raw: Record<string, unknown>
  try {
    raw = JSON.parse(line.slice(SUMMARY_PREFIX.length))
  } catch {
    throw new Error(`wrk's summary is not JSON: ${line}`)
  }
  const top = numbers("", raw, ["requests", "duration_us", "threads", "connections", "cpu_s"])
  const non2xx = (typeof raw.non2xx === "object" && raw.non2xx !== null ? raw.non2xx : {}) as Record<string, unknown>
  for (const [status, count] of Object.entries(non2xx)) {
    if (!/^\d{3}$/.test(status) || !isNumber(count)) throw new Error(`wrk's summary has a bad non2xx entry ${status}`)
  }
  const wrk = numbers("wrk_latency_ms", raw.wrk_latency_ms, LATENCY)
  const histogram = raw.histogram
  if (histogram !== "ffi" && histogram !== "scan" && histogram !== "wrk") {
    throw new Error(`wrk's summary has no histogram: ${String(histogram)}`)
  }
  return {
    requests: top.requests,
    seconds: top.duration_us / 1e6,
    threads: top.threads,
    connections: top.connections,
    non2xx: non2xx as Record<string, number>,
    errors: numbers("errors", raw.errors, ["connect", "read", "write", "timeout"]),
    latencyMs:
      raw.latency_ms === null
        ? null
        : { ...numbers("latency_ms", raw.latency_ms, [...LATENCY, "count"]), p99Corrected: wrk.p99 },
    histogram,
    wrkLatencyMs: wrk,
    cpuSeconds: top.cpu_s
  }
}

export interface Load {
  /** 2xx answers: the work that was done. */
  readonly ok: number
  readonly non2xx: number
  readonly non2xxByStatus: Readonly<Record<string, number>>
  /** Socket errors (connect, read, write) and timeouts. */
  readonly errors: number
  readonly seconds: number
  /** 2xx answers per second. */
  readonly rps: number
  /** Of every answer, in milliseconds (wrk's coordinated-omission correction undone, where it could be). */
  readonly latencyMs: Latency
  /** Cores wrk kept busy: near its threads' count, the load generator would be the limit. */
  readonly loadCores: number
  readonly summary: Summary
}

export const loadOf = (summary: Summary): Load => {
  const non2xx = Object.values(summary.non2xx).reduce((a, b) => a + b, 0)
  const ok = summary.requests - non2xx
  const { connect, read, write, timeout } = summary.errors
  return {
    ok,
    non2xx,
    non2xxByStatus: summary.non2xx,
    errors: connect + read + write + timeout,
    seconds: summary.seconds,
    rps: summary.seconds > 0 ? ok / summary.seconds : 0,
    latencyMs: summary.latencyMs ?? summary.wrkLatencyMs,
    loadCores: summary.seconds > 0 ? summary.cpuSeconds / summary.seconds : 0,
    summary
  }
}

export const WRK_MISSING =
  "wrk is not installed: the bench drives its HTTP load with wrk (a C load generator). Install it with " +
  "`apt-get install wrk` (Debian, Ubuntu) or `brew install wrk` (macOS), or put it on PATH."

/** Throws WRK_MISSING when there is no wrk to run. */
export const requireWrk = () => {
  const result = spawnSync("wrk", ["-v"], { stdio: "ignore" })
  if ((result.error as NodeJS.ErrnoException | undefined)?.code === "ENOENT") throw new Error(WRK_MISSING)
}

const scriptDirs = new Set<string>()
// A run cut short (Ctrl-C) leaves its script behind otherwise.
process.once("exit", () => scriptDirs.forEach((dir) => rmSync(dir, { recursive: true, force: true })))

/** The script of one run, in a directory of its own under the temporary directory; `remove` takes both away. */
const scriptFile = (workload: Workload, text: string) => {
  const dir = mkdtempSync(join(tmpdir(), "livepoll-bench-wrk-"))
  scriptDirs.add(dir)
  const file = join(dir, `${workload}.lua`)
  writeFileSync(file, text)
  return {
    file,
    remove: () => {
      scriptDirs.delete(dir)
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

export interface Running {
  /** 2xx answers so far (`spread1m` only, which reports as it goes; 0 for the others until done). */
  readonly completed: () => number
  readonly stop: () => void
  readonly done: Promise<Load>
}

const running = new Set<Running>()

/** Stops every load still running (Ctrl-C). */
export const stopAllLoads = () => running.forEach((r) => r.stop())

export interface DriveOptions {
  readonly connections: number
  /** wrk threads; `connections` is split between them and must be a multiple of them. */
  readonly threads: number
  /** Whole seconds (wrk's -d); for `spread1m` the bound on a run that ends once every poll has its vote. */
  readonly seconds: number
  /** `spread1m`: how many distinct polls, one vote each. */
  readonly distinctPolls?: number
}

/**
 * Drives `url` with wrk: `connections` keep-alive connections, each sending its next request when the last one is
 * answered, for `seconds`. `spread1m` ends once every one of its polls has been voted on.
 */
export const start = (url: string, workload: Workload, options: DriveOptions): Running => {
  const distinctPolls = options.distinctPolls ?? 0
  // A thread without a poll of its own would never finish; so would one without a connection.
  const threads = Math.max(
    1,
    Math.min(options.threads, options.connections, workload === "spread1m" ? distinctPolls : Infinity)
  )
  const connections = options.connections - (options.connections % threads)
  const seconds = Math.max(1, Math.ceil(options.seconds))
  const { file, remove } = scriptFile(
    workload,
    script(workload, { connections, threads, distinctPolls, seconds, run: `v${runTag()}` })
  )
  const args = ["-t", String(threads), "-c", String(connections), "-d", `${seconds}s`, "--timeout", "10s"]
  const progress = new Map<string, number>()
  const finished = new Set<string>()
  let stdout = ""
  let child: Processes.Child | undefined
  let stopped = false
  let nudge: NodeJS.Timeout | undefined
  const onLine = (line: string, stream: "stdout" | "stderr") => {
    if (stream === "stdout") {
      stdout += `${line}\n`
      return
    }
    const match = /^(progress|finished) (\d+) (\d+)$/.exec(line)
    if (match === null) return
    progress.set(match[2]!, Number(match[3]))
    if (match[1] === "finished") finished.add(match[2]!)
    // Every thread has stopped; wrk itself waits out -d unless interrupted, and ignores SIGINT for a moment at its
    // start, so it is asked until it goes.
    if (finished.size === threads && nudge === undefined) {
      child?.signal("SIGINT")
      nudge = setInterval(() => child?.signal("SIGINT"), 250)
    }
  }
  const done = (async () => {
    child = await Processes.launch("wrk", [...args, "-s", file, url], process.env, onLine)
    if (stopped) void child.stop(2000)
    const code = await child.exit
    if (stopped) throw new Error("the load was stopped")
    if (code !== 0) throw new Error(`wrk exited with code ${code}:\n${child.lines.slice(-20).join("\n")}`)
    return loadOf(parseSummary(stdout))
  })().finally(() => {
    clearInterval(nudge)
    remove()
    running.delete(handle)
  })
  const handle: Running = {
    completed: () => [...progress.values()].reduce((a, b) => a + b, 0),
    stop: () => {
      stopped = true
      void child?.stop(2000)
    },
    done
  }
  running.add(handle)
  return handle
}

export const drive = (url: string, workload: Workload, options: DriveOptions): Promise<Load> =>
  start(url, workload, options).done
