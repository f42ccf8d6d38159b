import { Deferred, Effect, Exit, Fiber, FiberId, Runtime } from "effect"
import type { Health } from "../src/Domain.js"
import { StoreUnavailable } from "../src/Domain.js"
import { COMMAND_TIMEOUT_MS } from "../src/RedisClient.js"
import { SLOTS, slotOf } from "../src/RedisClient/Cluster.js"
import { type PartPipeline, REDIS_CLUSTER, type StoreClient, type StoreClients } from "../src/VoteStore/Cluster.js"
import * as Faults from "./Faults.js"

/**
 * Redis Cluster in memory, on the clock of the Effect that runs it (the simulation's virtual clock): masters that each
 * own ranges of the 16384 slots and have one replica, asynchronous replication (a write reaches a replica some
 * milliseconds after its master applied it), WAIT counting the replicas that hold a connection's last write, MOVED
 * for a key whose slot another master serves, failover (a master dies, its replica takes over its slots with only what
 * it had received), a dead node's return as a replica, and slot migration.
 *
 * It also plays ioredis's Cluster client, as far as the store uses it (`StoreClient`): a slot map per client that is
 * read again after a MOVED or a closed connection, one connection per node whose commands run in order, a command
 * resent on MOVED and after a closed connection (every 100 ms, 16 times at most), a pipeline resent whole only when
 * each of its commands failed alike, a command time-out per attempt. Latency, injected errors and lost answers (the
 * command ran, its answer never came) as in FakeRedis.
 *
 * The store's scripts are modelled on their Lua (src/VoteStore/Cluster.ts and Redis.ts), key by key, so the keys and
 * slots the store names are the ones checked. Promises cannot wait on virtual time: a command returns a promise that
 * never settles and carries the Effect doing the work, and this fake's `call` (RedisClient.caller's part) runs it.
 */

export type Op = "parts" | "read" | "vote"

/** `error`: refused before it runs (every command of the request fails alike). `lostAnswer`: it ran, no answer came. */
export type Fault = "ok" | "error" | "lostAnswer"

export interface Range {
  readonly min: number
  readonly max: number
}

export interface FaultRates {
  readonly error?: number
  /** Probability that a write (batch parts, a vote) runs and its answer is lost. */
  readonly lostAnswer?: number
}

export interface FakeClusterOptions extends FaultRates {
  readonly masters: number
  readonly seed: number
  /** One-way latency between a client and a node, per request. */
  readonly latency?: Range
  /** How long after its master a replica receives a write. */
  readonly lag?: Range
  /** How long a full resynchronisation takes (a node back as a replica, a replica back). */
  readonly syncMs?: number
  /** How long after a master dies its replica takes over (the cluster's node time-out and election). */
  readonly failoverMs?: number
  /** The clients' command time-out; RedisClient.COMMAND_TIMEOUT_MS if unset. */
  readonly timeoutMs?: number
  /** Lines of what happened (failovers, migrations, lost writes). */
  readonly note?: (line: string) => void
}

export interface FakeClusterStats {
  requests: number
  errors: number
  lostAnswers: number
  moved: number
  closed: number
  partsApplied: number
  partsRepeated: number
  waits: number
  /** WAITs that answered fewer replicas than asked. */
  waitsShort: number
  promotions: number
  /** Failovers that found no replica to promote: the slots wait for their master. */
  noHeir: number
  /** Writes a promoted replica never received: gone with their master. */
  lostWrites: number
  migrations: number
  rejoins: number
}

export interface NodeView {
  readonly key: string
  readonly role: "master" | "replica"
  readonly up: boolean
  readonly master: string | undefined
  readonly synced: boolean
}

export interface FakeCluster extends Faults.FaultControls<Op, Fault, FaultRates> {
  /** The clients of one app instance (commands, voters, batches), each with its own slot map and connections. */
  readonly clients: (name: string) => StoreClients
  readonly nodes: () => ReadonlyArray<NodeView>
  /** Masters that own slots, by address (up or down). */
  readonly masters: () => ReadonlyArray<string>
  readonly ownerOf: (slot: number) => string
  /** Kills a node. A master's replica takes over after `failoverMs`, if it is up and synchronised by then. */
  readonly kill: (key: string) => void
  /** A dead node returns: as a replica of whoever took over its slots, else as before with its data (an AOF). */
  readonly rejoin: (key: string) => void
  /** Dead nodes, the longest dead first. */
  readonly dead: () => ReadonlyArray<string>
  /** Moves a slot and its keys to another master, at once; false if either master is down. */
  readonly migrate: (slot: number, to: string) => boolean
  /** When the replicas of a master will hold the last slot migrated into it (now if they do). */
  readonly migrationsReplicatedAt: (key: string) => number
  /** A poll's counts as the master of its slot holds them. */
  readonly counts: (pollId: string) => Record<string, number>
  /** Every poll's counts as the masters of their slots hold them. */
  readonly polls: () => ReadonlyMap<string, Record<string, number>>
  readonly stats: Readonly<FakeClusterStats>
}

const keySlots = new Map<string, number>()

/** The slot of a key, by the Redis Cluster spec: of its hash tag if it has a non-empty one. */
export const keySlot = (key: string): number => {
  let slot = keySlots.get(key)
  if (slot !== undefined) return slot
  const open = key.indexOf("{")
  const close = open < 0 ? -1 : key.indexOf("}", open + 1)
  slot = close > open + 1 ? slotOf(key.slice(open + 1, close)) : slotOf(key)
  if (keySlots.size > 100_000) keySlots.clear()
  keySlots.set(key, slot)
  return slot
}

/** ioredis's message for a command whose connection closed before it was answered. */
export const CONNECTION_CLOSED = "Connection is closed."
const TIMED_OUT = "Command timed out"
const MAX_REDIRECTIONS = 16
const RETRY_DELAY_ON_FAILOVER_MS = 100
/** RedisClient.caller's second guard, past the command time-out. */
const GUARD_MARGIN_MS = 200

class ReplyError extends Error {
  override readonly name = "ReplyError"
}

type Value =
  | { readonly type: "hash"; readonly fields: Map<string, number> }
  | { readonly type: "set"; readonly members: Set<string> }
  | { readonly type: "string"; expiresAt: number }
type Data = Map<string, Value>

const cloneValue = (value: Value): Value =>
  value.type === "hash"
    ? { type: "hash", fields: new Map(value.fields) }
    : value.type === "set"
      ? { type: "set", members: new Set(value.members) }
      : { type: "string", expiresAt: value.expiresAt }
const cloneData = (data: Data): Data => new Map([...data].map(([key, value]) => [key, cloneValue(value)]))

/** A write on its way to a replica, or a whole copy (a full resynchronisation). */
interface Arrival {
  readonly offset: number
  readonly at: number
  readonly apply: (node: Node) => void
  readonly snapshot: boolean
}

interface Node {
  readonly key: string
  role: "master" | "replica"
  up: boolean
  /** Bumped on every return: the connections of an earlier run are gone. */
  run: number
  /** Done when this run of the node ends. */
  closed: Deferred.Deferred<void>
  data: Data
  /** As a master: its replication offset (writes so far); as a replica: the offset of the last write it applied. */
  offset: number
  /** As a master. */
  replicas: Array<Node>
  /** As a replica. */
  master: Node | undefined
  /** A master whose slots its replica took over: where it goes when it returns. */
  replacedBy: Node | undefined
  inbox: Array<Arrival>
  lastArrival: number
  /** A replica that has had its full copy from its master: only such a one may take over. */
  synced: boolean
  downSince: number
  migratedOffset: number
}

interface Connection {
  readonly run: number
  /** The node's offset after this connection's last write: what WAIT waits for. */
  woff: number
  /** Requests on one connection arrive, and their answers come back, in order. */
  sendFree: number
  replyFree: number
  readonly lock: Effect.Semaphore
}

interface Client {
  readonly name: string
  slots: Array<Array<string>>
  /** The topology its map was read at; undefined once a MOVED has changed it (then the map is its own). */
  version: number | undefined
  refreshing: boolean
  readonly connections: Map<string, Connection>
}

interface Context {
  readonly node: Node
  readonly now: number
  readonly write: (apply: (data: Data) => void) => void
}

interface Command {
  readonly keys: ReadonlyArray<string>
  /** ioredis resends a pipeline whole on a redirection only if what did not fail only read. */
  readonly readonly: boolean
  readonly run: (context: Context) => unknown
  readonly wait?: { readonly replicas: number; readonly timeoutMs: number }
}

type Result = [Error | null, unknown]

const EFFECT = Symbol("FakeCluster.effect")
type Carrier<A> = Promise<A> & { readonly [EFFECT]: Effect.Effect<A, Error> }

const carry = <A>(effect: Effect.Effect<A, Error>): Promise<A> =>
  Object.assign(new Promise<A>(() => {}), { [EFFECT]: effect })

/** mulberry32: a small seeded generator, drawn from synchronously. */
const generator = (seed: number) => {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const hashOf = (data: Data, key: string) => {
  const value = data.get(key)
  return value?.type === "hash" ? value.fields : undefined
}
const hincrby = (data: Data, key: string, field: string, n: number) => {
  let value = data.get(key)
  if (value === undefined || value.type !== "hash") data.set(key, (value = { type: "hash", fields: new Map() }))
  value.fields.set(field, (value.fields.get(field) ?? 0) + n)
}
const exists = (data: Data, key: string, now: number) => {
  const value = data.get(key)
  return value !== undefined && (value.type !== "string" || value.expiresAt > now)
}
const flat = (fields: Map<string, number> | undefined) => {
  const out: Array<string> = []
  for (const [field, n] of fields ?? []) out.push(field, String(n))
  return out
}

const COUNTS_KEY = /^poll:\{(.*)\}:counts$/

export const make = (options: FakeClusterOptions): Effect.Effect<FakeCluster> =>
  Effect.gen(function* () {
    const clock = yield* Effect.clock
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const now = () => clock.unsafeCurrentTimeMillis()
    const random = generator(options.seed)
    const draw = (range: Range | undefined) =>
      range === undefined ? 0 : range.min + Math.floor(random() * (range.max - range.min + 1))
    const chance = (p: number | undefined) => p !== undefined && p > 0 && random() < p
    const timeoutMs = options.timeoutMs ?? COMMAND_TIMEOUT_MS
    const syncMs = options.syncMs ?? 50
    const failoverMs = options.failoverMs ?? 1000
    const note = options.note ?? (() => {})
    const faults = Faults.make<Op, Fault, FaultRates>({
      error: options.error ?? 0,
      lostAnswer: options.lostAnswer ?? 0
    })
    const stats: FakeClusterStats = {
      requests: 0,
      errors: 0,
      lostAnswers: 0,
      moved: 0,
      closed: 0,
      partsApplied: 0,
      partsRepeated: 0,
      waits: 0,
      waitsShort: 0,
      promotions: 0,
      noHeir: 0,
      lostWrites: 0,
      migrations: 0,
      rejoins: 0
    }
    const sleepUntil = (at: number) => {
      const ms = at - now()
      return ms > 0 ? Effect.sleep(ms) : Effect.void
    }

    const newNode = (index: number, role: "master" | "replica"): Node => ({
      key: `127.0.0.1:${7100 + index}`,
      role,
      up: true,
      run: 0,
      closed: Deferred.unsafeMake<void>(FiberId.none),
      data: new Map(),
      offset: 0,
      replicas: [],
      master: undefined,
      replacedBy: undefined,
      inbox: [],
      lastArrival: 0,
      synced: true,
      downSince: 0,
      migratedOffset: 0
    })
    const all: Array<Node> = []
    for (let i = 0; i < options.masters; i++) all.push(newNode(i, "master"))
    for (let i = 0; i < options.masters; i++) {
      const replica = newNode(options.masters + i, "replica")
      replica.master = all[i]!
      all[i]!.replicas.push(replica)
      all.push(replica)
    }
    const byKey = new Map(all.map((node) => [node.key, node]))
    // As `redis-cli --cluster create` splits them: contiguous ranges, one per master.
    const owners: Array<Node> = Array.from(
      { length: SLOTS },
      (_, slot) => all[Math.floor((slot * options.masters) / SLOTS)]!
    )

    // -----------------------------------------------------------------------------------------------------------------
    // Replication

    /** Applies a write on a master and sends it on to each replica that is up, to arrive after the lag. */
    const write = (master: Node, apply: (data: Data) => void) => {
      apply(master.data)
      master.offset++
      for (const replica of master.replicas) {
        if (!replica.up) continue
        const at = Math.max(replica.lastArrival, now() + draw(options.lag))
        replica.lastArrival = at
        replica.inbox.push({ offset: master.offset, at, apply: (node) => apply(node.data), snapshot: false })
      }
    }
    /** What has reached a replica by now, applied. */
    const catchUp = (replica: Node) => {
      const t = now()
      while (replica.inbox.length > 0 && replica.inbox[0]!.at <= t) {
        const arrival = replica.inbox.shift()!
        arrival.apply(replica)
        replica.offset = arrival.offset
        if (arrival.snapshot) replica.synced = true
      }
    }
    const fullSync = (replica: Node, master: Node) => {
      const snapshot = cloneData(master.data)
      const at = now() + syncMs
      replica.inbox = [
        {
          offset: master.offset,
          at,
          apply: (node) => {
            node.data = cloneData(snapshot)
          },
          snapshot: true
        }
      ]
      replica.lastArrival = at
      replica.synced = false
    }
    /** When a replica holds the write at `offset` of its master (Infinity: it never will, as things are). */
    const ackAt = (replica: Node, offset: number) => {
      catchUp(replica)
      if (replica.synced && replica.offset >= offset) return now()
      for (const arrival of replica.inbox) if (arrival.offset >= offset) return arrival.at
      return Number.POSITIVE_INFINITY
    }

    // -----------------------------------------------------------------------------------------------------------------
    // Topology

    const slotsOf = (node: Node) => owners.filter((owner) => owner === node).length
    // Which nodes own slots changes only on a failover or a migration: remembered between them.
    let owning: ReadonlyArray<Node> | undefined
    /** Bumped whenever the map CLUSTER SLOTS would give changes. */
    let version = 0
    const changed = (owned: boolean) => {
      if (owned) owning = undefined
      version++
    }
    const owningNodes = () => (owning ??= [...new Set(owners)].sort((a, b) => (a.key < b.key ? -1 : 1)))
    const masters = () => owningNodes().map((node) => node.key)

    const promote = (dead: Node) => {
      if (dead.up || owners.every((owner) => owner !== dead)) return
      for (const replica of dead.replicas) catchUp(replica)
      const heir = dead.replicas.find((replica) => replica.up && replica.synced)
      if (heir === undefined) {
        stats.noHeir++
        note(`failover of ${dead.key}: no replica up and synchronised; its slots wait for it`)
        return
      }
      catchUp(heir)
      heir.role = "master"
      heir.master = undefined
      heir.replicas = dead.replicas.filter((replica) => replica !== heir)
      for (const replica of heir.replicas) {
        replica.master = heir
        if (replica.up) fullSync(replica, heir)
      }
      dead.replicas = []
      dead.replacedBy = heir
      for (let slot = 0; slot < SLOTS; slot++) if (owners[slot] === dead) owners[slot] = heir
      changed(true)
      stats.promotions++
      note(`failover: ${heir.key} took over the slots of ${dead.key}`)
    }

    const kill = (key: string) => {
      const node = byKey.get(key)!
      if (!node.up) return
      node.up = false
      node.downSince = now()
      Deferred.unsafeDone(node.closed, Exit.void)
      changed(false)
      if (node.role === "master") {
        for (const replica of node.replicas) {
          catchUp(replica)
          const lost = replica.inbox.filter((arrival) => !arrival.snapshot).length
          stats.lostWrites += lost
          if (lost > 0) note(`${key} died with ${lost} writes its replica ${replica.key} had not received`)
          replica.inbox = []
          replica.lastArrival = now()
        }
        runFork(
          Effect.delay(
            Effect.sync(() => promote(node)),
            failoverMs
          )
        )
      } else {
        catchUp(node)
        node.inbox = []
      }
      note(`${key} (${node.role}) killed`)
    }

    const rejoin = (key: string) => {
      const node = byKey.get(key)!
      if (node.up) return
      node.up = true
      node.run++
      node.closed = Deferred.unsafeMake<void>(FiberId.none)
      stats.rejoins++
      changed(false)
      if (node.role === "master" && node.replacedBy !== undefined) {
        let master = node.replacedBy
        while (master.replacedBy !== undefined) master = master.replacedBy
        node.replacedBy = undefined
        node.role = "replica"
        node.master = master
        node.replicas = []
        node.synced = false
        node.inbox = []
        master.replicas.push(node)
        if (master.up) fullSync(node, master)
        note(`${key} back, as a replica of ${master.key}`)
      } else if (node.role === "master") {
        for (const replica of node.replicas) if (replica.up) fullSync(replica, node)
        note(`${key} back, as the master of its ${slotsOf(node)} slots`)
      } else {
        const master = node.master!
        if (master.up && master.role === "master") fullSync(node, master)
        note(`${key} back, as a replica of ${master.key}`)
      }
    }

    const migrate = (slot: number, to: string) => {
      const from = owners[slot]!
      const target = byKey.get(to)!
      if (!from.up || !target.up || target.role !== "master" || from === target) return false
      for (const [key, value] of [...from.data]) {
        if (keySlot(key) !== slot) continue
        const copy = cloneValue(value)
        write(target, (data) => void data.set(key, cloneValue(copy)))
        write(from, (data) => void data.delete(key))
      }
      target.migratedOffset = target.offset
      owners[slot] = target
      changed(true)
      stats.migrations++
      note(`slot ${slot} migrated from ${from.key} to ${to}`)
      return true
    }

    const migrationsReplicatedAt = (key: string) => {
      const master = byKey.get(key)!
      let at = now()
      for (const replica of master.replicas) {
        if (!replica.up) continue
        const acked = ackAt(replica, master.migratedOffset)
        if (Number.isFinite(acked)) at = Math.max(at, acked)
      }
      return at
    }

    /**
     * The map CLUSTER SLOTS gives: per range of slots, its master and the replicas that are up. Built once per
     * topology and shared by the clients that read it, so a client never changes an entry in place (see `request`).
     */
    let shared: { readonly version: number; readonly map: Array<Array<string>> } | undefined
    const slotMap = () => {
      if (shared?.version === version) return shared.map
      const map: Array<Array<string>> = new Array(SLOTS)
      let owner: Node | undefined
      let entry: Array<string> = []
      for (let slot = 0; slot < SLOTS; slot++) {
        const node = owners[slot]!
        if (node !== owner) {
          owner = node
          entry = [node.key, ...node.replicas.filter((replica) => replica.up).map((replica) => replica.key)]
        }
        map[slot] = entry
      }
      shared = { version, map }
      return map
    }

    // -----------------------------------------------------------------------------------------------------------------
    // Serving

    const nextFault = (op: Op): Fault => {
      const next = faults.nextScripted(op)
      if (next !== undefined) return next
      if (chance(faults.rates().error)) return "error"
      if (op !== "read" && chance(faults.rates().lostAnswer)) return "lostAnswer"
      return "ok"
    }

    const runCommand = (command: Command, node: Node, connection: Connection): Result => {
      const slots = command.keys.map(keySlot)
      if (slots.some((slot) => slot !== slots[0])) {
        return [new ReplyError("CROSSSLOT Keys in request don't hash to the same slot"), null]
      }
      if (slots.length > 0) {
        const owner = owners[slots[0]!]!
        if (node.role !== "master" || owner !== node) {
          stats.moved++
          return [new ReplyError(`MOVED ${slots[0]} ${owner.key}`), null]
        }
      }
      try {
        const context: Context = {
          node,
          now: now(),
          write: (apply) => {
            write(node, apply)
            connection.woff = node.offset
          }
        }
        return [null, command.run(context)]
      } catch (error) {
        return [error instanceof Error ? error : new ReplyError(String(error)), null]
      }
    }

    /** WAIT: blocks the connection until enough replicas hold its last write, or the time-out. */
    const waitFor = (node: Node, run: number, connection: Connection, replicas: number, waitMs: number) =>
      Effect.gen(function* () {
        if (node.role !== "master") {
          return [new ReplyError("ERR WAIT cannot be used with replica instances"), null] as Result
        }
        stats.waits++
        const woff = connection.woff
        const acks = node.replicas
          .filter((replica) => replica.up)
          .map((replica) => ackAt(replica, woff))
          .sort((a, b) => a - b)
        yield* sleepUntil(Math.min(now() + waitMs, acks[replicas - 1] ?? Number.POSITIVE_INFINITY))
        if (node.run !== run || !node.up) return "closed" as const
        const acked = node.replicas.filter((replica) => replica.up && ackAt(replica, woff) <= now()).length
        if (acked < replicas) stats.waitsShort++
        return [null, acked] as Result
      })

    const execute = (node: Node, run: number, connection: Connection, commands: ReadonlyArray<Command>, op: Op) =>
      Effect.gen(function* () {
        if (node.run !== run || !node.up) return "closed" as const
        stats.requests++
        const fault = nextFault(op)
        if (fault === "error") {
          stats.errors++
          return commands.map((): Result => [new ReplyError("LOADING Redis is loading the dataset in memory"), null])
        }
        const results: Array<Result> = []
        for (const command of commands) {
          if (command.wait === undefined) {
            results.push(runCommand(command, node, connection))
            continue
          }
          const result = yield* waitFor(node, run, connection, command.wait.replicas, command.wait.timeoutMs)
          if (result === "closed") return result
          results.push(result)
        }
        if (fault === "lostAnswer") {
          stats.lostAnswers++
          return "lost" as const
        }
        return results
      })

    /** The node's side of one request: it arrives, runs in its connection's turn, and its answer travels back. */
    const serve = (node: Node, run: number, connection: Connection, commands: ReadonlyArray<Command>, op: Op) =>
      Effect.gen(function* () {
        const arrive = Math.max(connection.sendFree, now() + draw(options.latency))
        connection.sendFree = arrive
        yield* sleepUntil(arrive)
        const outcome = yield* connection.lock.withPermits(1)(execute(node, run, connection, commands, op))
        if (outcome === "closed" || outcome === "lost") return outcome
        const back = Math.max(connection.replyFree, now() + draw(options.latency))
        connection.replyFree = back
        yield* sleepUntil(back)
        return node.run === run && node.up ? outcome : ("closed" as const)
      })

    // -----------------------------------------------------------------------------------------------------------------
    // The client side (ioredis)

    const connectionTo = (client: Client, node: Node) => {
      let connection = client.connections.get(node.key)
      if (connection === undefined || connection.run !== node.run) {
        connection = { run: node.run, woff: 0, sendFree: 0, replyFree: 0, lock: Effect.unsafeMakeSemaphore(1) }
        client.connections.set(node.key, connection)
      }
      return connection
    }

    const refresh = (client: Client) => {
      if (client.refreshing) return
      client.refreshing = true
      runFork(
        Effect.delay(
          Effect.sync(() => {
            client.refreshing = false
            if (client.version === version || !all.some((node) => node.up)) return
            client.slots = slotMap()
            client.version = version
          }),
          draw(options.latency) * 2
        )
      )
    }

    /** One attempt on one node: its answer, or every command failed alike (connection closed, time-out). */
    const attempt = (client: Client, node: Node, commands: ReadonlyArray<Command>, op: Op) =>
      Effect.gen(function* () {
        const failAll = (message: string) => commands.map((): Result => [new Error(message), null])
        if (!node.up) return failAll(CONNECTION_CLOSED)
        const closed = node.closed
        const serving = yield* Effect.forkDaemon(serve(node, node.run, connectionTo(client, node), commands, op))
        return yield* Effect.raceAll([
          Effect.flatMap(Fiber.join(serving), (outcome) =>
            outcome === "closed" || outcome === "lost" ? Effect.never : Effect.succeed(outcome)
          ),
          Effect.map(Deferred.await(closed), () => failAll(CONNECTION_CLOSED)),
          Effect.map(Effect.sleep(timeoutMs), () => failAll(TIMED_OUT))
        ])
      })

    /**
     * A command or a pipeline, as ioredis sends it: to the master its map names for the first key's slot, again on
     * MOVED (to the node named, the map read again) and after a closed connection (100 ms later, the map read again).
     * A pipeline is resent only when every command failed with the same error and none that succeeded wrote.
     */
    const request = (client: Client, commands: ReadonlyArray<Command>, op: Op, pipeline: boolean) =>
      Effect.gen(function* () {
        let redirections = MAX_REDIRECTIONS
        for (;;) {
          const keyed = commands.filter((command) => command.keys.length > 0)
          const slot = keySlot(keyed[0]!.keys[0]!)
          if (pipeline) {
            const group = client.slots[slot]?.join(";")
            if (keyed.some((command) => client.slots[keySlot(command.keys[0]!)]?.join(";") !== group)) {
              return yield* Effect.fail(
                new Error("All keys in the pipeline should belong to the same slots allocation group")
              )
            }
          }
          const target = client.slots[slot]?.[0]
          const node = (target === undefined ? undefined : byKey.get(target)) ?? all.find((n) => n.up) ?? all[0]!
          const results = yield* attempt(client, node, commands, op)
          const first = results.find(([error]) => error !== null)?.[0]
          if (first === undefined || first === null) return results
          const alike = results.every(([error], i) =>
            error === null ? commands[i]!.readonly : error.message === first.message
          )
          const [kind, movedSlot, movedTo] = first.message.split(" ")
          const redirect = kind === "MOVED" || first.message === CONNECTION_CLOSED
          if (!alike || !redirect) {
            if (pipeline) return results
            return yield* Effect.fail(first)
          }
          if (first.message === CONNECTION_CLOSED) stats.closed++
          if (--redirections <= 0) {
            if (pipeline) return results
            return yield* Effect.fail(new Error(`Too many Cluster redirections. Last error: ${first}`))
          }
          if (kind === "MOVED") {
            const s = Number(movedSlot)
            // A pipeline replaces the slot's entry; a single command rewrites the master of the entry, which ioredis
            // shares among the slots of one range: here every slot of that range gets the new entry.
            if (client.version !== undefined) client.slots = client.slots.slice()
            const entry = client.slots[s]
            if (pipeline || entry === undefined) client.slots[s] = [movedTo!]
            else {
              const moved = [movedTo!, ...entry.slice(1)]
              for (let i = 0; i < SLOTS; i++) if (client.slots[i] === entry) client.slots[i] = moved
            }
            client.version = undefined
            refresh(client)
          } else {
            yield* Effect.sleep(RETRY_DELAY_ON_FAILOVER_MS)
            refresh(client)
          }
        }
      })

    const single = <A>(client: Client, op: Op, command: Command): Promise<A> =>
      carry(Effect.map(request(client, [command], op, false), (results) => results[0]![1] as A))

    // -----------------------------------------------------------------------------------------------------------------
    // The store's scripts and commands

    const applyPart = (marker: string, counts: string, ttl: number, amounts: ReadonlyArray<string | number>) => ({
      keys: [marker, counts],
      readonly: false,
      run: ({ now, write, node }: Context) => {
        const expiresAt = now + ttl * 1000
        // A repeat renews the marker: a write, which the WAIT after it waits for.
        if (exists(node.data, marker, now)) {
          write((data) => {
            const value = data.get(marker)
            if (value?.type === "string") value.expiresAt = expiresAt
          })
          stats.partsRepeated++
          return 0
        }
        write((data) => {
          data.set(marker, { type: "string", expiresAt })
          for (let a = 0; a + 1 < amounts.length; a += 2)
            hincrby(data, counts, String(amounts[a]), Number(amounts[a + 1]))
        })
        stats.partsApplied++
        return 1
      }
    })

    const pipelineOf = (client: Client): PartPipeline => {
      const commands: Array<Command> = []
      const pipeline: PartPipeline = {
        livepollApplyPart: (marker, counts, ttl, ...amounts) => {
          commands.push(applyPart(marker, counts, ttl, amounts))
          return pipeline
        },
        wait: (replicas, waitMs) => {
          commands.push({ keys: [], readonly: false, run: () => 0, wait: { replicas, timeoutMs: waitMs } })
          return pipeline
        },
        unlink: (key) => {
          commands.push({
            keys: [key],
            readonly: false,
            run: ({ write }: Context) => write((data) => data.delete(key))
          })
          return pipeline
        },
        exec: () => carry(request(client, commands, "parts", true))
      }
      return pipeline
    }

    const storeClient = (client: Client): StoreClient => ({
      status: "ready",
      get slots() {
        return client.slots
      },
      hgetall: (key) =>
        single(client, "read", {
          keys: [key],
          readonly: true,
          run: ({ node }) => {
            const out: Record<string, string> = Object.create(null)
            for (const [field, n] of hashOf(node.data, key) ?? []) out[field] = String(n)
            return out
          }
        }),
      livepollResults: (_numKeys, counts, ...markers) =>
        single(client, "read", {
          keys: [counts!, ...markers],
          readonly: false,
          run: ({ node, now }) => [
            flat(hashOf(node.data, counts!)),
            markers.flatMap((marker, i) => (exists(node.data, marker, now) ? [i + 1] : []))
          ]
        }),
      livepollOptions: (_numKeys, ...keys) =>
        single(client, "read", {
          keys,
          readonly: false,
          run: ({ node }) => keys.map((key) => [...(hashOf(node.data, key)?.keys() ?? [])])
        }),
      livepollVote: (key, option, max, deadline) =>
        single(client, "vote", {
          keys: [key],
          readonly: false,
          run: ({ node, now, write }) => {
            if (deadline > 0 && now > deadline) return -2
            const fields = hashOf(node.data, key)
            if (fields !== undefined && !fields.has(option) && fields.size >= max) return -1
            write((data) => hincrby(data, key, option, 1))
            return hashOf(node.data, key)!.get(option)!
          }
        }),
      livepollVoteOnce: (counts, voters, option, voter, deadline) =>
        single(client, "vote", {
          keys: [counts, voters],
          readonly: false,
          run: ({ node, now, write }) => {
            if (deadline > 0 && now > deadline) return -2
            const value = node.data.get(voters)
            if (value?.type === "set" && value.members.has(voter)) return 0
            write((data) => {
              let set = data.get(voters)
              if (set === undefined || set.type !== "set") data.set(voters, (set = { type: "set", members: new Set() }))
              set.members.add(voter)
              hincrby(data, counts, option, 1)
            })
            return 1
          }
        }),
      batchPipeline: () => pipelineOf(client),
      refreshSlotsCache: () => refresh(client)
    })

    const unavailable = (reason: string) => new StoreUnavailable({ node: REDIS_CLUSTER, reason })
    const describe = (error: Error) => (error.message.includes("timed out") ? "no answer in time" : error.message)
    const guardMs = timeoutMs + GUARD_MARGIN_MS
    /** RedisClient.caller's part: the call runs on (as ioredis would) even after its caller has given up on it. */
    const call = <A>(what: string, run: () => Promise<A>): Effect.Effect<A, StoreUnavailable> =>
      Effect.suspend(() => {
        const effect = (run() as Partial<Carrier<A>>)[EFFECT]
        if (effect === undefined) return Effect.dieMessage(`${what}: not a command of the fake cluster`)
        return Effect.flatMap(Effect.forkDaemon(effect), Fiber.join).pipe(
          Effect.timeoutFail({ duration: guardMs, onTimeout: () => unavailable(`${what}: timed out`) }),
          Effect.mapError((error) =>
            error instanceof StoreUnavailable ? error : unavailable(`${what} failed: ${describe(error)}`)
          )
        )
      })

    const health: Effect.Effect<Health> = Effect.sync(() => ({
      nodes: masters().map((key) => ({ name: key, reachable: byKey.get(key)!.up })),
      pendingVotes: 0
    }))

    const clientOf = (name: string): Client => ({
      name,
      slots: slotMap(),
      version,
      refreshing: false,
      connections: new Map()
    })

    const countsOf = (pollId: string): Record<string, number> => {
      const key = `poll:{${pollId}}:counts`
      const out: Record<string, number> = Object.create(null)
      for (const [field, n] of hashOf(owners[keySlot(key)]!.data, key) ?? []) out[field] = n
      return out
    }

    const cluster: FakeCluster = {
      clients: (name) => ({
        client: storeClient(clientOf(`${name}/commands`)),
        flusher: storeClient(clientOf(`${name}/batches`)),
        call,
        fenced: (_, send) => send(0),
        health
      }),
      nodes: () =>
        all.map((node) => {
          if (node.role === "replica") catchUp(node)
          return {
            key: node.key,
            role: node.role,
            up: node.up,
            master: node.master?.key,
            synced: node.synced
          }
        }),
      masters,
      ownerOf: (slot) => owners[slot]!.key,
      kill,
      rejoin,
      dead: () =>
        all
          .filter((node) => !node.up)
          .sort((a, b) => a.downSince - b.downSince)
          .map((node) => node.key),
      migrate,
      migrationsReplicatedAt,
      script: faults.script,
      clearScript: faults.clearScript,
      setRates: faults.setRates,
      counts: countsOf,
      polls: () => {
        const out = new Map<string, Record<string, number>>()
        for (const node of owningNodes()) {
          for (const key of node.data.keys()) {
            const poll = COUNTS_KEY.exec(key)?.[1]
            if (poll !== undefined && owners[keySlot(key)] === node) out.set(poll, countsOf(poll))
          }
        }
        return out
      },
      stats
    }
    return cluster
  })
