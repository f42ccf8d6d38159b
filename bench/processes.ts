import { type ChildProcess, spawn } from "node:child_process"
import { cpSync, existsSync, mkdtempSync, rmSync } from "node:fs"
import { createConnection } from "node:net"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import { buildSync } from "esbuild"
import { Redis } from "ioredis"
import { freePort } from "../test/support/redis.js"
import { freeNodePorts } from "../test/support/cluster.js"
import * as Config from "../src/Config.js"
import * as DevCluster from "../scripts/cluster.js"
import { ask } from "../scripts/redis.js"
import { MULTI_PROCESS_STAGES, runsAs, type Stage } from "./options.js"
import * as Pin from "./pin.js"
import { setTimeout as sleep } from "node:timers/promises"

export const ROOT = resolve(fileURLToPath(import.meta.url), "../..")
export const APP_ENTRY = join(ROOT, "dist", "main.js")

// Everything started here is stopped by `stopAll`, in reverse order, on success, on error and on Ctrl-C.
const stoppers = new Set<() => Promise<void>>()
const groups = new Set<number>()

const onStop = (stop: () => Promise<void>) => {
  stoppers.add(stop)
  return () => void stoppers.delete(stop)
}

export const stopAll = async (): Promise<void> => {
  for (const stop of [...stoppers].reverse()) {
    stoppers.delete(stop)
    await stop().catch(() => {})
  }
}

// Last resort when the harness itself dies: no child outlives it.
process.once("exit", () => {
  for (const pid of groups) {
    try {
      process.kill(-pid, "SIGKILL")
    } catch {
      // already gone
    }
  }
})

const exitOf = (child: ChildProcess) =>
  new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.exitCode !== null || child.signalCode !== null
      ? resolve({ code: child.exitCode, signal: child.signalCode })
      : child.once("exit", (code, signal) => resolve({ code, signal }))
  )

const signalGroup = (pid: number, signal: NodeJS.Signals) => {
  try {
    process.kill(-pid, signal)
  } catch {
    // already gone
  }
}

export interface Child {
  readonly pid: number
  /** The last lines of its output, stdout and stderr together. */
  readonly lines: Array<string>
  readonly exited: () => boolean
  /** Resolves with the exit code (null when killed by a signal) once its output has all been read. */
  readonly exit: Promise<number | null>
  /** Sends `signal` to the process group. */
  readonly signal: (signal: NodeJS.Signals) => void
  /** SIGTERM to the process group, SIGKILL after `timeoutMs`; resolves with the exit code (null when killed). */
  readonly stop: (timeoutMs?: number) => Promise<number | null>
}

/**
 * A child in a process group of its own, so a stop reaches anything it starts in turn. `onLine` sees each line of its
 * output as it comes.
 */
export const launch = (
  command: string,
  args: ReadonlyArray<string>,
  env: NodeJS.ProcessEnv,
  onLine?: (line: string, stream: "stdout" | "stderr") => void
): Promise<Child> =>
  new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"], detached: true })
    // "close" comes after the last of its output has been read, "exit" may come before.
    const closed = new Promise<number | null>((resolve) => child.once("close", (code) => resolve(code)))
    const lines: Array<string> = []
    for (const [stream, name] of [
      [child.stdout, "stdout"],
      [child.stderr, "stderr"]
    ] as const) {
      createInterface({ input: stream }).on("line", (line) => {
        lines.push(line)
        if (lines.length > 2000) lines.splice(0, 1000)
        onLine?.(line, name)
      })
    }
    child.once("error", (error: NodeJS.ErrnoException) =>
      reject(error.code === "ENOENT" ? new Error(`${command} is not installed or not on PATH`) : error)
    )
    child.once("spawn", () => {
      const pid = child.pid!
      groups.add(pid)
      const exit = exitOf(child)
      let hasExited = false
      void exit.then(() => {
        hasExited = true
        groups.delete(pid)
      })
      const stop = async (timeoutMs = 15_000) => {
        if (!hasExited) signalGroup(pid, "SIGTERM")
        const outcome = await Promise.race([exit, sleep(timeoutMs).then(() => undefined)])
        if (outcome !== undefined) return outcome.code
        signalGroup(pid, "SIGKILL")
        await exit
        return null
      }
      const signal = (to: NodeJS.Signals) => void (hasExited || signalGroup(pid, to))
      resolvePromise({ pid, lines, exited: () => hasExited, exit: closed, signal, stop })
    })
  })

const tail = (lines: ReadonlyArray<string>) => lines.slice(-20).join("\n")

export interface RedisNode {
  readonly name: string
  readonly pid: number
  readonly port: number
  readonly url: string
  /** The harness's own connection: INFO, FLUSHALL and the direct-ioredis baselines' setup. */
  readonly admin: Redis
  readonly version: string
  readonly stop: () => Promise<void>
}

const listening = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = createConnection({ port, host: "127.0.0.1" })
    socket.once("connect", () => {
      socket.destroy()
      resolve(true)
    })
    socket.once("error", () => resolve(false))
  })

const connect = (port: number) => {
  const client = new Redis({ port, host: "127.0.0.1", lazyConnect: true, maxRetriesPerRequest: 1 })
  client.on("error", () => {})
  return client
}

const versionOf = (info: string) => /redis_version:(\S+)/.exec(info)?.[1] ?? "unknown"

/** A throwaway redis-server on a free loopback port, AOF on, in a temporary directory removed on stop. */
export const startRedis = async (name: string, fsync: "everysec" | "always"): Promise<RedisNode> => {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), `livepoll-bench-redis-${port}-`))
  const args = ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", ""]
  const child = await launch("redis-server", [...args, "--appendonly", "yes", "--appendfsync", fsync], process.env)
  const admin = connect(port)
  const stop = async () => {
    admin.disconnect()
    await child.stop(5000)
    rmSync(dir, { recursive: true, force: true })
  }
  const remove = onStop(stop)
  const deadline = Date.now() + 10_000
  while (!(await listening(port))) {
    if (child.exited() || Date.now() > deadline) {
      await stop()
      remove()
      throw new Error(`redis-server on port ${port} did not start:\n${tail(child.lines)}`)
    }
    await sleep(50)
  }
  await admin.connect()
  const version = versionOf(await admin.info("server"))
  return {
    name,
    pid: child.pid,
    port,
    url: `redis://127.0.0.1:${port}`,
    admin,
    version,
    stop: async () => {
      remove()
      await stop()
    }
  }
}

export interface RedisCluster {
  /** The masters, as the cluster was created: what the app's commands reach, and what the counts are read from. */
  readonly masters: ReadonlyArray<RedisNode>
  /** Every node, masters and replicas, by client port. */
  readonly ports: ReadonlyArray<number>
  readonly version: string
  readonly stop: () => Promise<void>
}

/** Whether every node's CLUSTER SLOTS names a replica beside the master of every range. */
const listsReplicas = async (ports: ReadonlyArray<number>) => {
  for (const port of ports) {
    const ranges = await ask(port, (c) => c.call("CLUSTER", "SLOTS") as Promise<Array<ReadonlyArray<unknown>>>)
    // [first slot, last slot, master, replica, ...]
    if (ranges === undefined || ranges.length === 0 || ranges.some((range) => range.length < 4)) return false
  }
  return true
}

/** How long the nodes may take to form the cluster and bring every replica in sync. */
const CLUSTER_READY_MS = 30_000

/**
 * A throwaway Redis Cluster like the dev one (`npm run dev -- --cluster`, scripts/cluster.ts): 3 masters and a
 * replica each, with its nodes' settings (AOF on, `appendfsync` as the standalone nodes have it), on free ports, each
 * node in a temporary directory removed on stop; created with `redis-cli --cluster create`, and ready once every node
 * agrees on the layout and every replica is in sync. Its masters each get an admin connection, as a standalone node.
 */
export const startCluster = async (fsync: "everysec" | "always"): Promise<RedisCluster> => {
  const ports = await freeNodePorts(DevCluster.DEFAULT_PORTS.length)
  const nodes: Array<{ readonly port: number; readonly dir: string; readonly child: Child }> = []
  const admins: Array<Redis> = []
  const stop = async () => {
    for (const admin of admins) admin.disconnect()
    await Promise.all(nodes.map((n) => n.child.stop(5000)))
    for (const n of nodes) rmSync(n.dir, { recursive: true, force: true })
  }
  const remove = onStop(stop)
  const fail = async (why: string, lines: ReadonlyArray<string>): Promise<never> => {
    await stop()
    remove()
    throw new Error(
      `the Redis Cluster on ${ports.join(",")} did not start: ${why}${lines.length > 0 ? `:\n${tail(lines)}` : ""}`
    )
  }
  for (const port of ports) {
    const dir = mkdtempSync(join(tmpdir(), `livepoll-bench-cluster-${port}-`))
    const args = DevCluster.nodeArgs(port, dir, [["--appendfsync", fsync]])
    nodes.push({ port, dir, child: await launch("redis-server", args, process.env) })
  }
  const deadline = Date.now() + CLUSTER_READY_MS
  for (const node of nodes) {
    while (!(await listening(node.port))) {
      if (node.child.exited() || Date.now() > deadline) await fail(`:${node.port} is not listening`, node.child.lines)
      await sleep(50)
    }
  }
  // Every node listens by now: a failure from here on stops them all.
  const create = await launch("redis-cli", DevCluster.createArgs(ports), process.env).catch((error: Error) =>
    fail(`every node listened, then redis-cli --cluster create could not run: ${error.message}`, [])
  )
  if ((await create.exit) !== 0) await fail("redis-cli --cluster create failed", create.lines)
  let ready = await DevCluster.readiness(ports)
  while (!("masters" in ready)) {
    if (Date.now() > deadline) await fail(`not ready within ${CLUSTER_READY_MS / 1000} s: ${ready.waiting}`, [])
    const gone = nodes.find((n) => n.child.exited())
    if (gone !== undefined) await fail(`:${gone.port} exited`, gone.child.lines)
    await sleep(100)
    ready = await DevCluster.readiness(ports)
  }
  const masters: Array<RedisNode> = []
  for (const master of ready.masters) {
    const admin = connect(master.port)
    admins.push(admin)
    await admin.connect()
    masters.push({
      name: `cluster-${master.port}`,
      pid: nodes.find((n) => n.port === master.port)!.child.pid,
      port: master.port,
      url: `redis://127.0.0.1:${master.port}`,
      admin,
      version: versionOf(await admin.info("server")),
      // The cluster's nodes stop together.
      stop: async () => {}
    })
  }
  // What the app reads to decide REDIS_WAIT_REPLICAS when unset, CLUSTER SLOTS, lists a replica only once the
  // answering node has heard that it replicated something (a replication offset above 0): a new cluster's replicas
  // have nothing yet, and the app would wait for none. A write to each master, then until every node lists them.
  await Promise.all(masters.map((m) => m.admin.flushall()))
  while (!(await listsReplicas(ports))) {
    if (Date.now() > deadline)
      await fail(`CLUSTER SLOTS did not list every master's replica within ${CLUSTER_READY_MS / 1000} s`, [])
    await sleep(100)
  }
  return {
    masters,
    ports,
    version: masters[0]?.version ?? "unknown",
    stop: async () => {
      remove()
      await stop()
    }
  }
}

/**
 * Replicas each flushed batch waits for, as the app says at start in the cluster stage (`REDIS_WAIT_REPLICAS`, or
 * what it made of the setting unset); undefined for the other stages.
 */
export const waitReplicasOf = (output: string): number | undefined => {
  const found = /a flushed batch is confirmed once (\d+) replica/.exec(output)?.[1]
  return found === undefined ? undefined : Number(found)
}

/** The variables the app reads: each run states its own and inherits none from the shell. */
const APP_VARIABLES = [...Config.VARIABLES, "NODE_OPTIONS"]

const cleanEnv = (env: Readonly<Record<string, string>>): NodeJS.ProcessEnv => {
  const base: NodeJS.ProcessEnv = { ...process.env }
  for (const name of APP_VARIABLES) delete base[name]
  return { ...base, ...env }
}

export interface Server {
  /** The server's process; for a stage of more than one process, its primary (the workers are its children). */
  readonly pid: number
  /** More than one process: its CPU and memory are read over the primary and every process below it. */
  readonly multiProcess: boolean
  readonly port: number
  readonly url: string
  /** Stops the process (SIGTERM, so the app flushes its buffer) and resolves with its exit code. */
  readonly stop: () => Promise<number | null>
  readonly output: () => string
}

const answers = async (url: string) => {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2000) })
    await response.arrayBuffer()
    return response.status === 200
  } catch {
    return false
  }
}

let pinning: Pin.Pinning | undefined

/** From now on every server under test starts on `to.server` (bench/pin.ts); undefined leaves placement alone. */
export const pinServers = (to: Pin.Pinning | undefined) => {
  pinning = to
}

/**
 * Starts a server process (on the servers' CPU when pinned; with `everyCpu`, on every CPU: a primary and its workers)
 * and waits until every path in `ready` answers 200.
 */
const startServer = async (
  what: string,
  command: string,
  args: ReadonlyArray<string>,
  env: Readonly<Record<string, string>>,
  ready: ReadonlyArray<string>,
  timeoutMs = 30_000,
  everyCpu = false
): Promise<Server> => {
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const child = await launch(
    ...Pin.serverCommand(pinning, command, args, everyCpu),
    cleanEnv({ ...env, HOST: "127.0.0.1", PORT: String(port) })
  )
  const remove = onStop(async () => void (await child.stop()))
  const deadline = Date.now() + timeoutMs
  for (const path of ready) {
    while (!(await answers(url + path))) {
      if (child.exited() || Date.now() > deadline) {
        await child.stop()
        remove()
        throw new Error(`${what} did not answer GET ${path} with 200:\n${tail(child.lines)}`)
      }
      await sleep(50)
    }
  }
  return {
    pid: child.pid,
    multiProcess: everyCpu,
    port,
    url,
    output: () => child.lines.join("\n"),
    stop: async () => {
      remove()
      return child.stop()
    }
  }
}

let snapshot: string | undefined

/** The bench's own servers, in bench/, compiled for each run (no TypeScript loader in a measured process). */
const BENCH_SERVERS = ["bare.ts", "peers/fastify.ts"]

const compiled = (source: string) => {
  if (snapshot === undefined) throw new Error("snapshotBuild() compiles the bench's servers; it has not run")
  return join(snapshot, "bench", source.replace(/\.ts$/, ".mjs"))
}

/**
 * Copies dist/ aside and runs the app from the copy, so a rebuild during the run cannot change (or break) what is
 * measured; compiles the bench's own servers (bare, peers) beside it with esbuild, so none of them runs through a
 * TypeScript loader. The copy sits under node_modules/.cache, where the imports of all of them still resolve.
 */
export const snapshotBuild = (): string => {
  if (!existsSync(APP_ENTRY) || !existsSync(join(ROOT, "dist", "Page", "script.js"))) {
    throw new Error(
      `${APP_ENTRY} or the page's bundle is missing: run \`npm run build\` first (the benchmark runs the compiled app)`
    )
  }
  const dir = join(ROOT, "node_modules", ".cache", `livepoll-bench-${process.pid}`)
  cpSync(join(ROOT, "dist"), join(dir, "dist"), { recursive: true })
  onStop(async () => rmSync(dir, { recursive: true, force: true }))
  process.once("exit", () => rmSync(dir, { recursive: true, force: true }))
  snapshot = dir
  buildSync({
    entryPoints: BENCH_SERVERS.map((s) => join(ROOT, "bench", s)),
    outbase: join(ROOT, "bench"),
    outdir: join(dir, "bench"),
    outExtension: { ".js": ".mjs" },
    bundle: true,
    packages: "external",
    platform: "node",
    format: "esm",
    target: "node20",
    logLevel: "error"
  })
  return join(dir, "dist", "main.js")
}

/**
 * A stage's environment. Rate limits off unless measured (`--rate-limits`, with quotas no run reaches): all the load
 * comes from one address (and the voters workload's voters from one client), which the per-client limit exists to
 * turn away, and the peers have none.
 */
const RATE_LIMITS_ON = { RATE_LIMIT: "on", RATE_LIMIT_CLIENT: "1000000000", RATE_LIMIT_VOTER: "1000000000" }
export const envOf = (stage: Stage, nodes: ReadonlyArray<RedisNode>, rateLimits = false) => {
  const { pollStage, settings } = runsAs(stage)
  const env: Record<string, string> = {
    POLL_STAGE: pollStage,
    ...settings,
    ...(rateLimits ? RATE_LIMITS_ON : { RATE_LIMIT: "off" })
  }
  if (pollStage === "cluster") env.REDIS_CLUSTER = nodes.map((n) => n.url).join(",")
  else if (nodes.length > 0) {
    env.REDIS_URL = nodes[0]!.url
    env.REDIS_NODES = nodes.map((n) => n.url).join(",")
  }
  return env
}

/**
 * `node dist/main.js` for one stage, with the default cache TTL and flush interval. Ready once `GET /` answers and,
 * with Redis behind it, `GET /health` too (the listener opens before the first Redis connection is made). A stage of
 * more than one process (`full-workers2`) may run on every CPU, and is measured over its primary and workers.
 */
export const startApp = (stage: Stage, nodes: ReadonlyArray<RedisNode>, rateLimits = false): Promise<Server> =>
  startServer(
    `the app (${stage})`,
    process.execPath,
    [snapshot === undefined ? APP_ENTRY : join(snapshot, "dist", "main.js")],
    envOf(stage, nodes, rateLimits),
    nodes.length > 0 ? ["/", "/health"] : ["/"],
    30_000,
    MULTI_PROCESS_STAGES.includes(stage)
  )

/** The peer of a stage (bench/peers/fastify.ts), configured as the app is; it is up once listening. */
export const startPeer = (stage: Stage, nodes: ReadonlyArray<RedisNode>): Promise<Server> =>
  startServer(`the Fastify peer (${stage})`, process.execPath, [compiled("peers/fastify.ts")], envOf(stage, nodes), [
    "/"
  ])

/**
 * The ceiling: a bare node:http server doing the same counting in memory; with `fiber`, the same server running each
 * request's work in an Effect fiber of its own (the cost of a fiber per request, alone).
 */
export const startBare = (fiber = false): Promise<Server> =>
  startServer(
    fiber ? "the bare node:http server with a fiber per request" : "the bare node:http server",
    process.execPath,
    [compiled("bare.ts")],
    fiber ? { BARE_FIBER: "1" } : {},
    ["/"]
  )
