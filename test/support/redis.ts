import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Redis } from "ioredis"
import { ask, serverArgs } from "../../scripts/redis.js"
import { eventually } from "./wait.js"

/** Ports the project's own dev topology and the machine's default redis use; tests never take them. */
const RESERVED = new Set([6379, 7000, 7001, 8000])

export const freePort = async (): Promise<number> => {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer()
      server.once("error", reject)
      server.listen(0, "127.0.0.1", () => {
        const address = server.address()
        server.close(() => resolve(typeof address === "object" && address ? address.port : 0))
      })
    })
    if (!RESERVED.has(port)) return port
  }
}

export interface RedisServer {
  readonly port: number
  readonly url: string
  readonly dir: string
  /** A client for inspecting the server directly (the redis-cli of a test). */
  readonly client: () => Redis
  readonly stop: () => Promise<void>
  /** Start the same server again on the same port and data directory (AOF on, so data survives). */
  readonly restart: () => Promise<void>
  readonly kill: () => Promise<void>
  /** Start the process again after `kill` or `halt`, on the same port and data directory. */
  readonly start: () => Promise<void>
  /** Stop the process only, keeping the data directory for a later `start`. */
  readonly halt: () => Promise<void>
}

/** Until the redis-server on `port` answers PING. */
export const waitForPing = async (port: number, timeoutMs = 5000): Promise<void> => {
  await eventually(async () => ((await ask(port, (c) => c.ping())) === "PONG" ? true : undefined), {
    timeoutMs,
    what: `redis-server on ${port} answering PING`
  })
}

const exited = (child: ChildProcess) =>
  new Promise<void>((resolve) =>
    child.exitCode !== null || child.signalCode !== null ? resolve() : child.once("exit", () => resolve())
  )

/** Starts a throwaway redis-server on a free port with AOF on, in its own temporary directory. */
export const startRedis = async (options: { port?: number } = {}): Promise<RedisServer> => {
  const port = options.port ?? (await freePort())
  const dir = mkdtempSync(join(tmpdir(), `livepoll-redis-${port}-`))
  const clients: Array<Redis> = []
  let child: ChildProcess
  const launch = async () => {
    child = spawn(
      "redis-server",
      serverArgs(port, dir, [
        ["--appendonly", "yes"],
        ["--appendfsync", "always"]
      ]),
      { stdio: "ignore" }
    )
    await waitForPing(port)
  }
  await launch()
  const stop = async () => {
    child.kill("SIGTERM")
    await exited(child)
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    dir,
    client: () => {
      const client = new Redis({ port, host: "127.0.0.1", maxRetriesPerRequest: 1 })
      client.on("error", () => {})
      clients.push(client)
      return client
    },
    stop: async () => {
      clients.splice(0).forEach((c) => c.disconnect())
      await stop()
      rmSync(dir, { recursive: true, force: true })
    },
    restart: async () => {
      await stop()
      await launch()
    },
    start: launch,
    halt: stop,
    kill: async () => {
      child.kill("SIGKILL")
      await exited(child)
    }
  }
}
