/**
 * `npm run dev`: the whole local topology without Docker. Two redis-server shards on 127.0.0.1:7000 and :7001, or the
 * ports `DEV_SHARD_PORTS` names (reused when a standalone redis-server already answers there; a Redis in cluster mode
 * is refused), then the app on :8000 with every layer on. Ctrl-C stops the app first,
 * so its final flush reaches the shards, then the shards this script started.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { mkdirSync } from "node:fs"
import { join, relative } from "node:path"
import { fileURLToPath } from "node:url"
import { Redis } from "ioredis"
import { setTimeout as sleep } from "node:timers/promises"

const ROOT = fileURLToPath(new URL("..", import.meta.url))
/** The shards' ports: 7000 and 7001, or those `DEV_SHARD_PORTS` names (comma-separated). */
const SHARD_PORTS = (process.env["DEV_SHARD_PORTS"] ?? "7000,7001").split(",").map((p) => Number(p.trim()))
const READY_TIMEOUT_MS = 10_000
const REDIS_STOP_TIMEOUT_MS = 10_000
/** The app bounds its own final flush; this only guards against an app that never exits. */
const APP_STOP_TIMEOUT_MS = 30_000

const log = (line: string) => console.log(`[dev] ${line}`)

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
const probe = async (port: number): Promise<"none" | "standalone" | string> => {
  const client = new Redis({
    port,
    host: "127.0.0.1",
    lazyConnect: true,
    connectTimeout: 1000,
    commandTimeout: 1000,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null
  })
  client.on("error", () => {})
  try {
    await client.connect()
    if ((await client.ping()) !== "PONG") return "none"
    const info = await client.info("server").catch(() => "")
    return /redis_mode:(\w+)/.exec(info)?.[1] ?? "standalone"
  } catch {
    return "none"
  } finally {
    client.disconnect()
  }
}

/** Whether a Redis answers PING on 127.0.0.1:port right now. */
const ping = async (port: number): Promise<boolean> => (await probe(port)) !== "none"

const redisServerVersion = (): string | undefined => {
  const probe = spawnSync("redis-server", ["--version"], { encoding: "utf8" })
  if (probe.error !== undefined || probe.status !== 0) return undefined
  return /v=(\S+)/.exec(probe.stdout)?.[1] ?? "unknown version"
}

interface Shard {
  readonly port: number
  readonly child: ChildProcess
  /** The last lines redis-server printed, shown when it fails to start. */
  readonly tail: Array<string>
}

const started: Array<Shard> = []

const startShard = (port: number): Shard => {
  const dir = join(ROOT, "data", String(port))
  mkdirSync(dir, { recursive: true })
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--appendonly", "yes", "--dir", dir, "--save", ""],
    // Its own process group: a terminal Ctrl-C must not stop the shards before the app has flushed into them.
    { stdio: ["ignore", "pipe", "pipe"], detached: true }
  )
  const tail: Array<string> = []
  const keep = (chunk: Buffer) => {
    tail.push(...chunk.toString("utf8").split("\n").filter(Boolean))
    tail.splice(0, Math.max(0, tail.length - 10))
  }
  child.stdout?.on("data", keep)
  child.stderr?.on("data", keep)
  child.on("error", (error) => tail.push(String(error)))
  const shard = { port, child, tail }
  started.push(shard)
  log(`started redis-server on :${port} (pid ${child.pid}, data in ./${relative(ROOT, dir)})`)
  return shard
}

class StartupFailed extends Error {}

const waitForShard = async (shard: Shard) => {
  const deadline = Date.now() + READY_TIMEOUT_MS
  for (;;) {
    if (stopSignal !== undefined) return
    if (shard.child.exitCode !== null || shard.child.signalCode !== null) {
      throw new StartupFailed(
        `redis-server on :${shard.port} exited (${shard.child.exitCode ?? shard.child.signalCode}) while starting; its last lines:\n` +
          shard.tail.join("\n")
      )
    }
    if (await ping(shard.port)) return log(`redis-server on :${shard.port} answers PING`)
    if (Date.now() > deadline) {
      throw new StartupFailed(
        `redis-server on :${shard.port} did not answer PING within ${READY_TIMEOUT_MS / 1000} s:\n` +
          shard.tail.join("\n")
      )
    }
    await sleep(50)
  }
}

const stopShards = async () => {
  for (const shard of started.reverse()) {
    if (shard.child.exitCode !== null || shard.child.signalCode !== null) continue
    log(`stopping redis-server on :${shard.port}`)
    // SIGTERM: redis-server fsyncs its append-only file and exits.
    shard.child.kill("SIGTERM")
    const timer = setTimeout(() => {
      log(`redis-server on :${shard.port} did not stop within ${REDIS_STOP_TIMEOUT_MS / 1000} s; killing it`)
      shard.child.kill("SIGKILL")
    }, REDIS_STOP_TIMEOUT_MS)
    await exited(shard.child)
    clearTimeout(timer)
  }
}

/** Runs the app until it exits or a stop is requested; resolves with the code this script should exit with. */
const runApp = async (defaults: Record<string, string>): Promise<number> => {
  const env = { ...defaults, ...process.env }
  log(
    `starting the app: POLL_STAGE=${env.POLL_STAGE} PORT=${env.PORT}` +
      (defaults.REDIS_NODES ? ` REDIS_NODES=${env.REDIS_NODES}` : "")
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

const main = async (): Promise<number> => {
  const version = redisServerVersion()
  if (version === undefined) {
    log("redis-server is not on the PATH, so the shards cannot start. Install it with one of:")
    log("  sudo apt-get install redis-server   (Debian, Ubuntu)")
    log("  brew install redis                  (macOS)")
    log("Until then the app runs the in-memory stage (votes are lost when it stops).")
    return runApp({ POLL_STAGE: "memory", PORT: "8000" })
  }
  log(`redis-server ${version} found`)
  if (SHARD_PORTS.length === 0 || SHARD_PORTS.some((port) => !Number.isInteger(port) || port < 1 || port > 65535)) {
    log(`DEV_SHARD_PORTS must be a comma-separated list of ports, got ${process.env["DEV_SHARD_PORTS"]}`)
    return 1
  }
  try {
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
            `or give the shards other ports, e.g. DEV_SHARD_PORTS=7100,7101 npm run dev`
        )
      }
      await waitForShard(startShard(port))
    }
  } catch (error) {
    log(error instanceof StartupFailed ? error.message : `could not start the shards: ${String(error)}`)
    await stopShards()
    return 1
  }
  if (stopSignal !== undefined) {
    log(`${stopSignal}: stopping before the app started`)
    await stopShards()
    log("stopped")
    return 0
  }
  const code = await runApp({
    POLL_STAGE: "full",
    PORT: "8000",
    REDIS_NODES: SHARD_PORTS.map((port) => `redis://127.0.0.1:${port}`).join(",")
  })
  await stopShards()
  log("stopped")
  return code
}

// Last resort if this script fails unexpectedly: never leave a started shard behind.
process.on("exit", () => {
  for (const shard of started) if (shard.child.exitCode === null && shard.child.signalCode === null) shard.child.kill()
})

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  }
)
