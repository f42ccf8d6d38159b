/**
 * `npm run dev`: the whole local topology without Docker. Two redis-server shards on 127.0.0.1:7000 and :7001, or the
 * ports `DEV_SHARD_PORTS` names (reused when a standalone redis-server already answers there; a Redis in cluster mode
 * is refused), then the app on :8000 with every layer on. Ctrl-C stops the app first,
 * so its final flush reaches the shards, then the shards this script started.
 *
 * `npm run dev -- --cluster`: a Redis Cluster of 3 masters and 3 replicas on 7100-7105 (or `DEV_CLUSTER_PORTS`),
 * created on the first run and started again from its nodes.conf files on later ones, then the app on it in the
 * `cluster` stage. Ctrl-C stops the app, then the nodes.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { mkdirSync } from "node:fs"
import { isAbsolute, join, relative, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { setTimeout as sleep } from "node:timers/promises"
import * as Cluster from "./cluster.js"
import { ask, serverArgs } from "./redis.js"

const ROOT = fileURLToPath(new URL("..", import.meta.url))
/** The shards' ports: 7000 and 7001, or those `DEV_SHARD_PORTS` names (comma-separated). */
const SHARD_PORTS = (process.env["DEV_SHARD_PORTS"] ?? "7000,7001").split(",").map((p) => Number(p.trim()))
/** Where the nodes keep their data: ./data, or the directory `DEV_DATA_DIR` names. */
const DATA_DIR = resolve(process.env["DEV_DATA_DIR"] ?? join(ROOT, "data"))
const USAGE = "usage: npm run dev [-- --cluster]"
const READY_TIMEOUT_MS = 10_000
/** A cluster started again from its nodes.conf files may first have to agree again on who serves what. */
const CLUSTER_READY_TIMEOUT_MS = 30_000
const REDIS_STOP_TIMEOUT_MS = 10_000
/** The app bounds its own final flush; this only guards against an app that never exits. */
const APP_STOP_TIMEOUT_MS = 30_000

const log = (line: string) => console.log(`[dev] ${line}`)

/** A directory as the log shows it: relative to the repository when it lies inside. */
const shown = (dir: string) => {
  const path = relative(ROOT, dir)
  return path.startsWith("..") || isAbsolute(path) ? dir : `./${path}`
}

let stopSignal: NodeJS.Signals | undefined
const stopRequested = new Promise<NodeJS.Signals>((resolve) => {
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(signal, () => {
      // A terminal Ctrl-C reaches npm, tsx and this script at once, so repeats are expected: the first one counts.
      if (stopSignal !== undefined) return
      stopSignal = signal
      resolve(signal)
    })
  }
})

const exited = (child: ChildProcess) =>
  new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null)
      resolve({ code: child.exitCode, signal: child.signalCode })
    else child.once("exit", (code, signal) => resolve({ code, signal }))
  })

/**
 * What answers on 127.0.0.1:port right now: nothing, a standalone redis-server (which the app can use as a shard), or
 * a Redis in another mode (a cluster node answers PING, then refuses every key of other slots with MOVED).
 */
const probe = async (port: number): Promise<"none" | "standalone" | string> =>
  (await ask(port, async (client) => {
    if ((await client.ping()) !== "PONG") return "none"
    const info = await client.info("server").catch(() => "")
    return /redis_mode:(\w+)/.exec(info)?.[1] ?? "standalone"
  })) ?? "none"

/** Whether a Redis answers PING on 127.0.0.1:port right now. */
const ping = async (port: number): Promise<boolean> => (await probe(port)) !== "none"

const versionOf = (command: string): string | undefined => {
  const probe = spawnSync(command, ["--version"], { encoding: "utf8" })
  if (probe.error !== undefined || probe.status !== 0) return undefined
  return /v=(\S+)/.exec(probe.stdout)?.[1] ?? /(\d+\.\d+\.\d+)/.exec(probe.stdout)?.[1] ?? "unknown version"
}

interface Server {
  readonly port: number
  readonly child: ChildProcess
  /** The last lines it printed, shown when it fails. */
  readonly tail: Array<string>
}

const started: Array<Server> = []

/** Runs a command in its own process group, keeping its last lines. */
const spawnKept = (command: string, args: ReadonlyArray<string>, keepLines: number) => {
  // Its own process group: a terminal Ctrl-C must not stop the shards before the app has flushed into them, nor
  // `redis-cli --cluster create` half-way.
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], detached: true })
  const tail: Array<string> = []
  const keep = (chunk: Buffer) => {
    tail.push(...chunk.toString("utf8").split("\n").filter(Boolean))
    tail.splice(0, Math.max(0, tail.length - keepLines))
  }
  child.stdout?.on("data", keep)
  child.stderr?.on("data", keep)
  child.on("error", (error) => tail.push(String(error)))
  return { child, tail }
}

const startRedis = (port: number, dir: string, args: ReadonlyArray<string>): Server => {
  mkdirSync(dir, { recursive: true })
  const server = { port, ...spawnKept("redis-server", args, 10) }
  started.push(server)
  log(`started redis-server on :${port} (pid ${server.child.pid}, data in ${shown(dir)})`)
  return server
}

const startShard = (port: number): Server => {
  const dir = join(DATA_DIR, String(port))
  return startRedis(port, dir, serverArgs(port, dir, [["--appendonly", "yes"]]))
}

class StartupFailed extends Error {}

const waitForServer = async (server: Server) => {
  const deadline = Date.now() + READY_TIMEOUT_MS
  for (;;) {
    if (stopSignal !== undefined) return
    if (server.child.exitCode !== null || server.child.signalCode !== null) {
      throw new StartupFailed(
        `redis-server on :${server.port} exited (${server.child.exitCode ?? server.child.signalCode}) while starting; its last lines:\n` +
          server.tail.join("\n")
      )
    }
    if (await ping(server.port)) return log(`redis-server on :${server.port} answers PING`)
    if (Date.now() > deadline) {
      throw new StartupFailed(
        `redis-server on :${server.port} did not answer PING within ${READY_TIMEOUT_MS / 1000} s:\n` +
          server.tail.join("\n")
      )
    }
    await sleep(50)
  }
}

const stopServers = async () => {
  for (const server of started.reverse()) {
    if (server.child.exitCode !== null || server.child.signalCode !== null) continue
    log(`stopping redis-server on :${server.port}`)
    // SIGTERM: redis-server fsyncs its append-only file and exits.
    server.child.kill("SIGTERM")
    const timer = setTimeout(() => {
      log(`redis-server on :${server.port} did not stop within ${REDIS_STOP_TIMEOUT_MS / 1000} s; killing it`)
      server.child.kill("SIGKILL")
    }, REDIS_STOP_TIMEOUT_MS)
    await exited(server.child)
    clearTimeout(timer)
  }
}

/** Runs the app until it exits or a stop is requested; resolves with the code this script should exit with. */
const runApp = async (defaults: Record<string, string>): Promise<number> => {
  // Readable lines in a terminal; `npm start` keeps the JSON default.
  const env: Record<string, string | undefined> = { LOG_FORMAT: "logfmt", ...defaults, ...process.env }
  const where = Object.keys(defaults).filter((name) => name !== "POLL_STAGE" && name !== "PORT")
  log(
    `starting the app: POLL_STAGE=${env.POLL_STAGE} PORT=${env.PORT}` +
      where.map((name) => ` ${name}=${env[name]}`).join("")
  )
  // `node --import tsx` rather than the tsx launcher: one process, so the SIGTERM below reaches the app itself.
  const app = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
    cwd: ROOT,
    env,
    stdio: "inherit",
    detached: true
  })
  const appExit = exited(app)
  const first = await Promise.race([appExit.then((exit) => ({ exit })), stopRequested.then((signal) => ({ signal }))])
  if ("exit" in first) {
    const { code, signal } = first.exit
    log(`the app exited on its own (${code ?? signal})`)
    return code ?? 1
  }
  log(`${first.signal}: stopping the app (it flushes any pending votes before it exits)`)
  app.kill("SIGTERM")
  const timer = setTimeout(() => {
    log(`the app did not stop within ${APP_STOP_TIMEOUT_MS / 1000} s; killing it`)
    app.kill("SIGKILL")
  }, APP_STOP_TIMEOUT_MS)
  const { code, signal } = await appExit
  clearTimeout(timer)
  log(`the app stopped (${code ?? signal})`)
  return 0
}

const installHint = (missing: string, what: string) => {
  log(`${missing} is not on the PATH, so ${what}. Install it with one of:`)
  log("  sudo apt-get install redis-server   (Debian, Ubuntu)")
  log("  brew install redis                  (macOS)")
}

const runMemory = () => {
  log("Until then the app runs the in-memory stage (votes are lost when it stops).")
  return runApp({ POLL_STAGE: "memory", PORT: "8000" })
}

const main = async (): Promise<number> => {
  const args = process.argv.slice(2)
  const unknown = args.filter((arg) => arg !== "--cluster")
  if (unknown.length > 0) {
    log(`unknown argument ${unknown.join(" ")}; ${USAGE}`)
    return 2
  }
  if (args.includes("--cluster")) return mainCluster()
  const version = versionOf("redis-server")
  if (version === undefined) {
    installHint("redis-server", "the shards cannot start")
    return runMemory()
  }
  log(`redis-server ${version} found`)
  if (SHARD_PORTS.length === 0 || SHARD_PORTS.some((port) => !Number.isInteger(port) || port < 1 || port > 65535)) {
    log(`DEV_SHARD_PORTS must be a comma-separated list of ports, got ${process.env["DEV_SHARD_PORTS"]}`)
    return 1
  }
  const startShards = async () => {
    for (const port of SHARD_PORTS) {
      if (stopSignal !== undefined) break
      const found = await probe(port)
      if (found === "standalone") {
        log(`:${port} already answers PING; using it as is (it will be left running)`)
        continue
      }
      if (found !== "none") {
        throw new StartupFailed(
          `:${port} is a Redis in ${found} mode, not a standalone redis-server the app can use as a shard: stop it, ` +
            `or give the shards other ports, e.g. DEV_SHARD_PORTS=7010,7011 npm run dev`
        )
      }
      await waitForServer(startShard(port))
    }
  }
  return runOn("the shards", startShards, {
    POLL_STAGE: "full",
    PORT: "8000",
    REDIS_NODES: SHARD_PORTS.map((port) => `redis://127.0.0.1:${port}`).join(",")
  })
}

/**
 * Starts the servers with `start`, then the app on them with `app` as its defaults, until it exits or a stop is
 * requested; the servers this script started are stopped in every case. Resolves with the code to exit with.
 */
const runOn = async (what: string, start: () => Promise<void>, app: Record<string, string>): Promise<number> => {
  try {
    await start()
  } catch (error) {
    log(error instanceof StartupFailed ? error.message : `could not start ${what}: ${String(error)}`)
    await stopServers()
    return 1
  }
  if (stopSignal !== undefined) {
    log(`${stopSignal}: stopping before the app started`)
    await stopServers()
    log("stopped")
    return 0
  }
  const code = await runApp(app)
  await stopServers()
  log("stopped")
  return code
}

/** Until the cluster on `ports` can serve the app; returns early on a stop request. */
const waitForCluster = async (nodes: ReadonlyArray<Server>) => {
  const ports = nodes.map((n) => n.port)
  const deadline = Date.now() + CLUSTER_READY_TIMEOUT_MS
  for (;;) {
    if (stopSignal !== undefined) return
    const gone = nodes.find((n) => n.child.exitCode !== null || n.child.signalCode !== null)
    if (gone !== undefined) {
      throw new StartupFailed(
        `redis-server on :${gone.port} exited (${gone.child.exitCode ?? gone.child.signalCode}); its last lines:\n` +
          gone.tail.join("\n")
      )
    }
    const ready = await Cluster.readiness(ports)
    if ("masters" in ready) {
      const masters = ready.masters.map((m) => `:${m.port}`).join(" ")
      return log(`the cluster is ready: masters ${masters}, each with its replica in sync`)
    }
    if (Date.now() > deadline) {
      throw new StartupFailed(
        `the cluster was not ready within ${CLUSTER_READY_TIMEOUT_MS / 1000} s: ${ready.waiting}; if it stays so, ` +
          `stop this and remove ${shown(join(DATA_DIR, "cluster"))} to create a new one`
      )
    }
    await sleep(100)
  }
}

const createCluster = async (ports: ReadonlyArray<number>) => {
  log(`creating the cluster: redis-cli ${Cluster.createArgs(ports).join(" ")}`)
  const create = spawnKept("redis-cli", Cluster.createArgs(ports), 40)
  // Not stopped by a stop request: the nodes would be left half-joined. It takes about a second.
  const { code, signal } = await exited(create.child)
  if (code !== 0) {
    throw new StartupFailed(
      `redis-cli --cluster create failed (${code ?? signal}); its last lines:\n${create.tail.join("\n")}`
    )
  }
}

const mainCluster = async (): Promise<number> => {
  const version = versionOf("redis-server")
  if (version === undefined) {
    installHint("redis-server", "the cluster's nodes cannot start")
    return runMemory()
  }
  log(`redis-server ${version} found`)
  const ports = Cluster.parsePorts(process.env["DEV_CLUSTER_PORTS"])
  if (typeof ports === "string") {
    log(ports)
    return 1
  }
  const clusterDir = join(DATA_DIR, "cluster")
  const nodes = ports.map((port) => ({ port, dir: join(clusterDir, String(port)) }))
  const disk = Cluster.onDisk(nodes, shown(clusterDir))
  if (typeof disk === "object") {
    log(disk.unusable)
    return 1
  }
  // redis-cli comes with redis-server; only a new cluster needs it.
  if (disk === "new" && versionOf("redis-cli") === undefined) {
    installHint("redis-cli", "the cluster cannot be created")
    return 1
  }
  const startNodes = async () => {
    for (const port of ports) {
      const found = await probe(port)
      if (found !== "none") {
        throw new StartupFailed(
          `:${port} already answers (a Redis in ${found} mode): stop it (redis-cli -p ${port} shutdown), ` +
            `or give the cluster other ports, e.g. ` +
            `DEV_CLUSTER_PORTS=7200,7201,7202,7203,7204,7205 npm run dev -- --cluster`
        )
      }
    }
    if (disk === "formed") log(`${shown(clusterDir)} holds a cluster of these ports: starting the same nodes again`)
    const servers = nodes.map(({ port, dir }) => startRedis(port, dir, Cluster.nodeArgs(port, dir)))
    for (const server of servers) await waitForServer(server)
    if (disk === "new" && stopSignal === undefined) await createCluster(ports)
    await waitForCluster(servers)
  }
  return runOn("the cluster", startNodes, {
    POLL_STAGE: "cluster",
    PORT: "8000",
    REDIS_CLUSTER: Cluster.seeds(ports),
    REDIS_WAIT_REPLICAS: String(Cluster.REPLICAS_PER_MASTER)
  })
}

// Last resort if this script fails unexpectedly: never leave a started server behind.
process.on("exit", () => {
  for (const server of started)
    if (server.child.exitCode === null && server.child.signalCode === null) server.child.kill()
})

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  }
)
