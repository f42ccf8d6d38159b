import { type ChildProcess, execFile, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { promisify } from "node:util"
import { Cluster, Redis } from "ioredis"
import { BUS_OFFSET, createArgs, nodeArgs } from "../../scripts/cluster.js"
import { ask } from "../../scripts/redis.js"
import { freePort, waitForPing } from "./redis.js"
import { sleep } from "./wait.js"

const NODE_TIMEOUT_MS = 2000

export type ClusterState = "ok" | "fail"

export interface ClusterNodeInfo {
  readonly port: number
  readonly role: "master" | "replica"
  /** The port of the master a replica follows. */
  readonly masterPort?: number | undefined
  /** Slot ranges a master serves, as [first, last]. */
  readonly slots: ReadonlyArray<readonly [number, number]>
}

export interface ClusterOptions {
  /** Masters (3 by default). */
  readonly masters?: number
  /** Replicas per master: 1 (the default) or 0. */
  readonly replicas?: 0 | 1
  /**
   * `cluster-require-full-coverage` (Redis's default: true). With it, every node refuses every command once one slot
   * has no reachable master; without it, the slots that still have a master keep answering.
   */
  readonly requireFullCoverage?: boolean
}

export interface RedisCluster {
  /** `redis://127.0.0.1:<port>` of every node. */
  readonly seeds: ReadonlyArray<string>
  readonly ports: ReadonlyArray<number>
  /** The roles as the cluster was created; `topology()` reads them as they are now (after a failover, say). */
  readonly nodes: ReadonlyArray<ClusterNodeInfo>
  readonly topology: () => Promise<ReadonlyArray<ClusterNodeInfo>>
  /** An ioredis Cluster client for inspection, disconnected by `stop`. */
  readonly client: () => Cluster
  /** A plain client to one node (CLUSTER NODES, INFO, …), disconnected by `stop`. */
  readonly node: (port: number) => Redis
  /** SIGKILL of one node; its data directory stays for `start`. */
  readonly kill: (port: number) => Promise<void>
  /** SIGSTOP of one node: its connections stay open and nothing on them is answered until `resume`. */
  readonly pause: (port: number) => Promise<void>
  /** SIGCONT of a paused node. */
  readonly resume: (port: number) => Promise<void>
  /** Starts a killed node again on its port, directory and nodes.conf; a no-op for a node that runs. */
  readonly start: (port: number) => Promise<void>
  /** The slot of a key (by `CLUSTER KEYSLOT`), or the slot itself. */
  readonly slotOf: (slotOrKey: number | string) => Promise<number>
  /** The port of the master serving a slot or a key's slot, as a live node sees it now. */
  readonly masterOf: (slotOrKey: number | string) => Promise<number>
  /** Until every running node reports this `cluster_state`. */
  readonly waitForState: (state: ClusterState, timeoutMs?: number) => Promise<void>
  /** Until every running master has its replicas attached and in sync (`state=online`): WAIT counts only those. */
  readonly waitForReplicas: (timeoutMs?: number) => Promise<void>
  /** Kills every node and removes their directories. */
  readonly stop: () => Promise<void>
}

const isFree = (port: number) =>
  new Promise<boolean>((resolve) => {
    const server = createServer()
    server.once("error", () => resolve(false))
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)))
  })

/** Free ports whose cluster bus port is free too, all distinct from each other's. */
export const freeNodePorts = async (n: number): Promise<Array<number>> => {
  const ports: Array<number> = []
  const taken = new Set<number>()
  while (ports.length < n) {
    const port = await freePort()
    if (port + BUS_OFFSET > 65_535 || taken.has(port) || taken.has(port + BUS_OFFSET)) continue
    if (!(await isFree(port + BUS_OFFSET))) continue
    ports.push(port)
    taken.add(port).add(port + BUS_OFFSET)
  }
  return ports
}

const until = async (what: string, timeoutMs: number, done: () => Promise<boolean>) => {
  const deadline = Date.now() + timeoutMs
  while (!(await done())) {
    if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms`)
    await sleep(50)
  }
}

const exited = (child: ChildProcess) =>
  new Promise<void>((resolve) =>
    child.exitCode !== null || child.signalCode !== null ? resolve() : child.once("exit", () => resolve())
  )

/** `CLUSTER NODES` as roles, masters' slot ranges and replicas' masters; failed and handshaking nodes left out. */
const parseNodes = (text: string): Array<ClusterNodeInfo> => {
  const lines = text
    .trim()
    .split("\n")
    .map((line) => line.trim().split(" "))
  const portById = new Map(lines.map((f) => [f[0]!, Number(f[1]!.split("@")[0]!.split(":")[1])]))
  return lines
    .filter((f) => !f[2]!.includes("fail") && !f[2]!.includes("handshake"))
    .map((f) => {
      const port = portById.get(f[0]!)!
      if (f[2]!.includes("master")) {
        const slots = f.slice(8).flatMap((range): Array<readonly [number, number]> => {
          if (range.startsWith("[")) return [] // a slot being migrated
          const [first, last] = range.split("-").map(Number)
          return [[first!, last ?? first!]]
        })
        return { port, role: "master" as const, slots }
      }
      return { port, role: "replica" as const, masterPort: portById.get(f[3]!), slots: [] }
    })
    .sort((a, b) => a.port - b.port)
}

/**
 * Starts a throwaway Redis Cluster of redis-server processes on free ports (each with AOF on, in its own temporary
 * directory), creates it with `redis-cli --cluster create`, and waits until every node says `cluster_state:ok` and
 * every master has its replicas attached. About 3 s for 3 + 3.
 */
export const startCluster = async (options: ClusterOptions = {}): Promise<RedisCluster> => {
  const masters = options.masters ?? 3
  const replicas = options.replicas ?? 1
  const ports = await freeNodePorts(masters * (1 + replicas))
  const dirs = new Map(ports.map((port) => [port, mkdtempSync(join(tmpdir(), `livepoll-cluster-${port}-`))]))
  const children = new Map<number, ChildProcess>()
  const clients: Array<{ disconnect: () => void }> = []

  const launch = async (port: number) => {
    const dir = dirs.get(port)!
    // The dev cluster's nodes, but quicker to fail over, and as strict as Redis's default about coverage unless told.
    const child = spawn(
      "redis-server",
      nodeArgs(port, dir, [
        ["--cluster-node-timeout", String(NODE_TIMEOUT_MS)],
        ["--cluster-require-full-coverage", options.requireFullCoverage === false ? "no" : "yes"],
        ["--appendfsync", "always"]
      ]),
      { stdio: "ignore" }
    )
    children.set(port, child)
    await waitForPing(port)
  }

  const running = () =>
    ports.filter((port) => {
      const child = children.get(port)
      return child !== undefined && child.exitCode === null && child.signalCode === null
    })

  const topologyFrom = async (port: number) => {
    const text = await ask(port, (c) => c.call("CLUSTER", "NODES") as Promise<string>)
    return text === undefined ? undefined : parseNodes(text)
  }

  /** The topology as the first running node that answers sees it. */
  const topology = async () => {
    for (const port of running()) {
      const nodes = await topologyFrom(port)
      if (nodes !== undefined) return nodes
    }
    throw new Error("no node of the cluster answers")
  }

  const waitForState = (state: ClusterState, timeoutMs = 10_000) =>
    until(`cluster_state:${state} on every node`, timeoutMs, async () => {
      const infos = await Promise.all(
        running().map((port) => ask(port, (c) => c.call("CLUSTER", "INFO") as Promise<string>))
      )
      return infos.every((info) => info !== undefined && info.includes(`cluster_state:${state}`))
    })

  const slotOf = async (slotOrKey: number | string) => {
    if (typeof slotOrKey === "number") return slotOrKey
    for (const port of running()) {
      const slot = await ask(port, (c) => c.call("CLUSTER", "KEYSLOT", slotOrKey) as Promise<number>)
      if (slot !== undefined) return slot
    }
    throw new Error("no node of the cluster answers")
  }

  const waitForReplicas = (timeoutMs = 10_000) =>
    until(`${replicas} replica(s) attached to every master`, timeoutMs, async () => {
      const masters = (await topology()).filter((n) => n.role === "master" && running().includes(n.port))
      const infos = await Promise.all(masters.map((n) => ask(n.port, (c) => c.info("replication"))))
      // A replica still in its first sync is listed but acknowledges nothing yet.
      return infos.every((info) => info !== undefined && (info.match(/state=online/g) ?? []).length === replicas)
    })

  const stop = async () => {
    clients.splice(0).forEach((c) => c.disconnect())
    await Promise.all(
      [...children.values()].map((child) => {
        child.kill("SIGKILL")
        return exited(child)
      })
    )
    for (const dir of dirs.values()) rmSync(dir, { recursive: true, force: true })
  }

  try {
    await Promise.all(ports.map(launch))
    await promisify(execFile)("redis-cli", createArgs(ports, replicas))
    await waitForState("ok")
    await until("every node seeing every other", 10_000, async () => {
      const views = await Promise.all(ports.map(topologyFrom))
      return views.every((view) => view !== undefined && view.length === ports.length)
    })
    await waitForReplicas()
  } catch (error) {
    await stop()
    throw error
  }
  const nodes = await topology()

  return {
    seeds: ports.map((port) => `redis://127.0.0.1:${port}`),
    ports,
    nodes,
    topology,
    client: () => {
      const client = new Cluster(
        ports.map((port) => ({ host: "127.0.0.1", port })),
        { clusterRetryStrategy: () => 100, redisOptions: { maxRetriesPerRequest: 1 } }
      )
      client.on("error", () => {})
      clients.push(client)
      return client
    },
    node: (port) => {
      const client = new Redis({ port, host: "127.0.0.1", maxRetriesPerRequest: 1 })
      client.on("error", () => {})
      clients.push(client)
      return client
    },
    kill: async (port) => {
      const child = children.get(port)
      if (child === undefined) return
      child.kill("SIGKILL")
      await exited(child)
    },
    pause: async (port) => {
      children.get(port)?.kill("SIGSTOP")
    },
    resume: async (port) => {
      children.get(port)?.kill("SIGCONT")
    },
    start: async (port) => {
      if (!running().includes(port)) await launch(port)
    },
    slotOf,
    masterOf: async (slotOrKey) => {
      const slot = await slotOf(slotOrKey)
      const master = (await topology()).find(
        (n) => n.role === "master" && n.slots.some(([first, last]) => first <= slot && slot <= last)
      )
      if (master === undefined) throw new Error(`no master serves slot ${slot}`)
      return master.port
    },
    waitForState,
    waitForReplicas,
    stop
  }
}
