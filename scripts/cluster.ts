/**
 * The Redis Cluster of `npm run dev -- --cluster`: its ports, its nodes' settings (docker-compose.cluster.yml runs
 * the same), what its data directory already holds, and when it is ready for the app. scripts/dev.ts runs the
 * processes; this module starts nothing.
 */
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { ask, serverArgs, type Setting } from "./redis.js"

/** 3 masters and a replica each: the smallest cluster `redis-cli --cluster create` makes with replicas. */
export const DEFAULT_PORTS: ReadonlyArray<number> = [7100, 7101, 7102, 7103, 7104, 7105]
export const REPLICAS_PER_MASTER = 1
const MIN_MASTERS = 3
/** A node's cluster bus listens this far above its client port. */
export const BUS_OFFSET = 10_000

/**
 * What every node runs with, here and in docker-compose.cluster.yml. A master that stops answering for 5 s counts
 * as failed and its replica takes over (Redis's default waits 15 s). While a range of slots has no master, the other
 * masters keep serving theirs (Redis's default refuses every command then): the app's write-behind queues are per
 * slot range, so an outage stalls only the polls it holds. A replica's full sync starts at once, not 5 s later in
 * case other replicas could share it.
 */
export const NODE_SETTINGS: ReadonlyArray<Setting> = [
  ["--cluster-enabled", "yes"],
  ["--cluster-node-timeout", "5000"],
  ["--cluster-require-full-coverage", "no"],
  ["--repl-diskless-sync-delay", "0"],
  ["--appendonly", "yes"]
]

/** The ports `DEV_CLUSTER_PORTS` names (comma-separated), or why they cannot make a cluster. */
export const parsePorts = (text: string | undefined): ReadonlyArray<number> | string => {
  if (text === undefined) return DEFAULT_PORTS
  const ports = text.split(",").map((p) => Number(p.trim()))
  const perMaster = 1 + REPLICAS_PER_MASTER
  if (ports.some((port) => !Number.isInteger(port) || port < 1 || port + BUS_OFFSET > 65_535))
    return (
      `DEV_CLUSTER_PORTS must be ports up to ${65_535 - BUS_OFFSET} ` +
      `(each node's bus listens ${BUS_OFFSET} above), got ${text}`
    )
  const taken = new Set([...ports, ...ports.map((port) => port + BUS_OFFSET)])
  if (taken.size !== 2 * ports.length)
    return `DEV_CLUSTER_PORTS must name distinct ports, none ${BUS_OFFSET} above another, got ${text}`
  if (ports.length % perMaster !== 0 || ports.length / perMaster < MIN_MASTERS)
    return (
      `DEV_CLUSTER_PORTS must name at least ${MIN_MASTERS * perMaster} ports, a multiple of ${perMaster} ` +
      `(a master and ${REPLICAS_PER_MASTER} replica each), got ${text}`
    )
  return ports
}

export const seeds = (ports: ReadonlyArray<number>) => ports.map((port) => `redis://127.0.0.1:${port}`).join(",")

/**
 * redis-server's arguments for the node on `port`, its data and nodes.conf in `dir`: NODE_SETTINGS, with each of
 * `overrides` in place of the same setting or after them (the tests' nodes fail over faster, say).
 */
export const nodeArgs = (port: number, dir: string, overrides: ReadonlyArray<Setting> = []): Array<string> =>
  serverArgs(port, dir, [
    ["--cluster-config-file", join(dir, "nodes.conf")],
    // A Map keeps each setting where it first stands and takes its last value.
    ...new Map([...NODE_SETTINGS, ...overrides])
  ])

/** redis-cli's arguments that make one cluster of the nodes on `ports`: masters, then `replicas` replicas each. */
export const createArgs = (ports: ReadonlyArray<number>, replicas = REPLICAS_PER_MASTER): Array<string> => [
  "--cluster",
  "create",
  ...ports.map((port) => `127.0.0.1:${port}`),
  "--cluster-replicas",
  String(replicas),
  "--cluster-yes"
]

/** The client ports of the nodes a nodes.conf lists (its own included), or undefined without one. */
const listedPorts = (file: string): ReadonlyArray<number> | undefined => {
  if (!existsSync(file)) return undefined
  return readFileSync(file, "utf8")
    .split("\n")
    .filter((line) => line.trim() !== "" && !line.startsWith("vars "))
    .map((line) => Number(/:(\d+)@/.exec(line.split(" ")[1] ?? "")?.[1]))
}

/**
 * What the nodes' directories hold: no cluster yet (create one), one cluster of exactly these ports (start the same
 * nodes again: each rejoins the others from its nodes.conf), or anything else, which only the user can sort out.
 */
export const onDisk = (
  nodes: ReadonlyArray<{ readonly port: number; readonly dir: string }>,
  shown: string
): "new" | "formed" | { readonly unusable: string } => {
  const wanted = nodes.map((n) => n.port).sort((a, b) => a - b)
  const listed = nodes.map((n) => ({ port: n.port, ports: listedPorts(join(n.dir, "nodes.conf")) ?? [] }))
  // A node that lists only itself has joined nothing yet.
  const joined = listed.filter((n) => n.ports.length > 1)
  if (joined.length === 0) return "new"
  const startOver = `remove ${shown} to create a new cluster (what it holds is lost)`
  const alone = listed.filter((n) => n.ports.length <= 1)
  const named = (some: ReadonlyArray<{ readonly port: number }>) => some.map((n) => `:${n.port}`).join(" ")
  if (alone.length > 0)
    return {
      unusable: `${shown} holds part of a cluster: ${named(joined)} joined one, ${named(alone)} did not; ${startOver}`
    }
  const other = joined.map((n) => [...n.ports].sort((a, b) => a - b)).find((ports) => ports.join() !== wanted.join())
  if (other !== undefined)
    return {
      unusable:
        `${shown} holds a cluster of ${other.join(",")}, not of ${wanted.join(",")}: ` +
        `run with DEV_CLUSTER_PORTS=${other.join(",")}, or ${startOver}`
    }
  return "formed"
}

export interface ClusterNode {
  readonly id: string
  readonly port: number
  readonly role: "master" | "replica"
  /** The id of the master a replica follows. */
  readonly masterId: string | undefined
  readonly slots: number
  /** Failed, handshaking or without an address, as the answering node sees it. */
  readonly healthy: boolean
}

/** `CLUSTER NODES` as one node sees the cluster. */
export const parseNodes = (text: string): Array<ClusterNode> =>
  text
    .trim()
    .split("\n")
    .map((line) => line.trim().split(" "))
    .map(([id, address, flags, master, , , , , ...slots]) => ({
      id: id!,
      port: Number(/:(\d+)@/.exec(address ?? "")?.[1]),
      role: flags!.includes("master") ? ("master" as const) : ("replica" as const),
      masterId: master === "-" ? undefined : master,
      slots: slots
        .filter((range) => !range.startsWith("["))
        .reduce((n, range) => {
          const [first, last] = range.split("-").map(Number)
          return n + (last ?? first!) - first! + 1
        }, 0),
      healthy: !/fail|handshake|noaddr/.test(flags!)
    }))
    .sort((a, b) => a.port - b.port)

const clusterInfo = (port: number) => ask(port, (c) => c.call("CLUSTER", "INFO") as Promise<string>)
const clusterNodes = async (port: number) => {
  const text = await ask(port, (c) => c.call("CLUSTER", "NODES") as Promise<string>)
  return text === undefined ? undefined : parseNodes(text)
}

/** A view's layout: who is master of how many slots, who follows whom. */
const layout = (view: ReadonlyArray<ClusterNode>) =>
  view.map((n) => `${n.id} ${n.role} ${n.masterId ?? "-"} ${n.slots}`).join("\n")

/**
 * What still keeps the cluster on `ports` from serving the app, or its masters once nothing does: every node says
 * `cluster_state:ok`, sees every other one healthy and the same layout (a replica may still be listed as a master
 * by a node the news has not reached), and every master has its replicas in sync (`state=online`; the app's WAIT
 * counts only those).
 */
export const readiness = async (
  ports: ReadonlyArray<number>
): Promise<{ readonly waiting: string } | { readonly masters: ReadonlyArray<ClusterNode> }> => {
  for (const port of ports) {
    const state = /cluster_state:(\w+)/.exec((await clusterInfo(port)) ?? "")?.[1]
    if (state !== "ok") return { waiting: `:${port} says cluster_state:${state ?? "(no answer)"}` }
  }
  let first: Array<ClusterNode> | undefined
  for (const port of ports) {
    const view = (await clusterNodes(port)) ?? []
    const healthy = view.filter((n) => n.healthy).length
    if (healthy !== ports.length) return { waiting: `:${port} sees ${healthy} of ${ports.length} nodes healthy` }
    first ??= view
    if (layout(view) !== layout(first)) return { waiting: `:${port} and :${ports[0]} do not agree yet on the layout` }
  }
  const view = first ?? []
  const masters = view.filter((n) => n.role === "master")
  for (const master of masters) {
    const replication = (await ask(master.port, (c) => c.info("replication"))) ?? ""
    const online = (replication.match(/state=online/g) ?? []).length
    if (online < REPLICAS_PER_MASTER)
      return { waiting: `master :${master.port} has ${online} of ${REPLICAS_PER_MASTER} replica(s) in sync` }
  }
  return { masters }
}
