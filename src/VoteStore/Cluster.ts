import { Duration, Effect, Exit, Layer, Runtime, Schedule, Scope } from "effect"
import type { Cluster, Redis } from "ioredis"
import type { Health, OptionId, PollId } from "../Domain.js"
import { StoreUnavailable } from "../Domain.js"
import { Metrics } from "../Metrics.js"
import * as RedisClient from "../RedisClient.js"
import * as ClusterClient from "../RedisClient/Cluster.js"
import { SLOTS, slotOf } from "../RedisClient/Cluster.js"
import { type Batch, MAX_POLLS_PER_BATCH, VoteStore, type VoteStoreShape } from "../VoteStore.js"
import { BATCH_MEMORY_SECONDS, countsKey, definePollScripts, type PollScripts, pollCommands } from "./Redis.js"

export { slotOf }

/** `served_via` of every read, and the name the cluster's calls fail under. */
export const REDIS_CLUSTER = "redis_cluster"

/**
 * Write-behind partitions: contiguous ranges of slots. A master serves a few ranges, so its outage stalls the queues
 * of its ranges only; each batch is split per poll anyway, so more queues would buy nothing.
 */
export const SLOT_GROUPS = 16

export interface ClusterStoreOptions {
  /** Any nodes of the cluster (`redis://host:port`); the rest are found from them. */
  readonly seeds: ReadonlyArray<string>
  /**
   * Replicas that must hold a batch part (`WAIT`) before `applyBatch` succeeds; 0: no `WAIT`. `auto`: 1 if every
   * master has a replica when the store starts (or the cluster cannot be asked: the safe side), else 0. Decided once:
   * a master promoted after a failover has no replica until the old one returns, and that is exactly when a batch
   * confirmed on it alone could be lost.
   */
  readonly waitReplicas: number | "auto"
  /** How long a command may go unanswered before it fails; RedisClient.COMMAND_TIMEOUT_MS if unset. */
  readonly commandTimeoutMs?: number
  /** How long `WAIT` waits for the replicas; half the command time-out if unset, so its answer comes back in time. */
  readonly waitTimeoutMs?: number
}

/** A batch marker lives in its poll's slot, so one script checks it and applies that poll's part. */
const batchKey = (pollId: string, batchId: string) => `poll:{${pollId}}:batch:${batchId}`

// KEYS: the batch marker, the counts hash (one slot). ARGV: marker ttl, then field, amount, ... 1: applied; 0: a
// repeat. A repeat renews the marker: a write, so the WAIT that follows covers the first application too (WAIT counts
// replicas that have a connection's last write, and the first may have gone over another connection or to the
// master this node has replaced).
const APPLY_PART_SCRIPT = `
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return 0
end
for a = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[a], ARGV[a + 1]) end
return 1`

/** A pipeline of batch parts (the script above), then at most one WAIT. */
export interface PartPipeline {
  livepollApplyPart(marker: string, counts: string, ttl: number, ...amounts: Array<string | number>): PartPipeline
  wait(replicas: number, timeoutMs: number): PartPipeline
  unlink(key: string): PartPipeline
  exec(): Promise<Array<[Error | null, unknown]> | null>
}

/**
 * What the store asks of a cluster client: its slot map, the poll scripts and pipelines of batch parts. `make` gives
 * it ioredis Cluster clients; the simulation gives it a fake cluster on virtual time (sim/FakeCluster.ts).
 */
export interface StoreClient extends PollScripts {
  readonly status: string
  /** Per slot, its master's address and then its replicas', as the client last read the cluster's map. */
  readonly slots: ReadonlyArray<ReadonlyArray<string> | undefined>
  hgetall(key: string): Promise<Record<string, string>>
  batchPipeline(): PartPipeline
  refreshSlotsCache(): void
}

export interface StoreClients {
  /** Reads, and votes not buffered. */
  readonly client: StoreClient
  /** Batches only: WAIT blocks its connection until the replicas answer, so votes and reads never queue behind it. */
  readonly flusher: StoreClient
  /** Runs one client call, failing with StoreUnavailable (RedisClient.caller). */
  readonly call: <A>(what: string, run: () => Promise<A>) => Effect.Effect<A, StoreUnavailable>
  /** Sends a vote fenced on the clock of its slot's master (RedisClient.ServerClock). */
  readonly fenced: <A>(slot: number, send: (deadline: number) => Promise<A>) => Promise<A>
  readonly health: Effect.Effect<Health>
}

export const partitionOf = (pollId: string): string =>
  `slot-group-${Math.floor((slotOf(pollId) * SLOT_GROUPS) / SLOTS)}`

const withScripts = (client: Cluster) => {
  client.defineCommand("livepollApplyPart", { numberOfKeys: 2, lua: APPLY_PART_SCRIPT })
  return Object.assign(definePollScripts(client), {
    batchPipeline: () => client.pipeline() as unknown as PartPipeline
  })
}

/**
 * Each node's clock as this process sees it (RedisClient.serverClock per node), so a vote's fence deadline is on the
 * clock of the master that runs it. Kept by node object: ioredis may replace a node's client with a new one for the
 * same address before the old one's `-node`. A vote whose slot's master is in neither the client's pool nor this map
 * is not sent (there is no clock to fence it with, and ioredis would send it to some node to be redirected): the
 * slot map is read again, and that puts the master back in the pool.
 */
const nodeClocks = (client: Cluster, timeoutMs: number) =>
  Effect.gen(function* () {
    const runSync = Runtime.runSync(yield* Effect.runtime<never>())
    const clocks = new Map<
      string,
      { readonly node: Redis; readonly clock: RedisClient.ServerClock; readonly scope: Scope.CloseableScope }
    >()
    const forget = (key: string) => {
      const entry = clocks.get(key)
      if (entry === undefined) return
      clocks.delete(key)
      runSync(Scope.close(entry.scope, Exit.void))
    }
    const add = (node: Redis) => {
      const key = ClusterClient.nodeKey(node)
      forget(key)
      const scope = runSync(Scope.make())
      const clock = runSync(Scope.extend(RedisClient.serverClock(node, timeoutMs), scope))
      clocks.set(key, { node, clock, scope })
      return clock
    }
    client.on("+node", add)
    client.on("-node", (node: Redis) => {
      const key = ClusterClient.nodeKey(node)
      if (clocks.get(key)?.node === node) forget(key)
    })
    for (const node of client.nodes("all")) add(node)
    yield* Effect.addFinalizer(() => Effect.sync(() => [...clocks.keys()].forEach(forget)))
    const clockOf = (master: string) => {
      const known = clocks.get(master)?.clock
      if (known !== undefined) return known
      const node = client.nodes("all").find((n) => ClusterClient.nodeKey(n) === master)
      if (node !== undefined) return add(node)
      client.refreshSlotsCache()
      return undefined
    }
    return <A>(slot: number, send: (deadline: number) => Promise<A>): Promise<A> => {
      const master = client.slots[slot]?.[0]
      const clock = master === undefined ? undefined : clockOf(master)
      return clock === undefined ? Promise.reject(new Error(`no master known for slot ${slot}`)) : clock.fenced(send)
    }
  })

/** Node client states in which a PING is sent (a lazily connected node connects for it) rather than queued. */
const PINGABLE = new Set(["ready", "wait", "connect", "connecting"])

const isRedirect = (error: Error) => error.message.startsWith("MOVED") || error.message.startsWith("ASK")

/** Polls keyed by a value, grouped by a key of each poll. */
const groupBy = <V>(entries: Iterable<readonly [PollId, V]>, keyOf: (pollId: PollId) => string | number) => {
  const groups = new Map<string | number, Array<readonly [PollId, V]>>()
  for (const entry of entries) {
    const key = keyOf(entry[0])
    let group = groups.get(key)
    if (group === undefined) groups.set(key, (group = []))
    group.push(entry)
  }
  return groups
}

/** 1 when every slot's master had a replica as the client last saw the cluster, 0 when one had none. */
const replicasAtStart = (client: StoreClient): number => {
  const owners = client.slots.filter((nodes): nodes is ReadonlyArray<string> => nodes !== undefined && nodes.length > 0)
  if (client.status !== "ready" || owners.length === 0) return 1
  return owners.every((nodes) => nodes.length > 1) ? 1 : 0
}

/**
 * From `CLUSTER NODES` of one or more nodes: 1 when every master that serves slots has a replica configured
 * (connected or not) in any of the answers, 0 when one has none, undefined when they name no master. Each node's view
 * fills in by gossip, and the slot map lists a replica only once it has synced: seconds after a cluster is created
 * neither may show a replica that exists yet.
 */
export const replicasConfigured = (...nodesTexts: ReadonlyArray<string>): number | undefined => {
  const masters = new Set<string>()
  const withReplica = new Set<string>()
  for (const line of nodesTexts.join("\n").split("\n")) {
    const [id, , flags, masterId, , , , , ...slots] = line.trim().split(" ")
    if (id === undefined || flags === undefined) continue
    const roles = flags.split(",")
    if (roles.includes("master") && slots.length > 0) masters.add(id)
    else if ((roles.includes("slave") || roles.includes("replica")) && masterId !== undefined) withReplica.add(masterId)
  }
  if (masters.size === 0) return undefined
  return [...masters].every((id) => withReplica.has(id)) ? 1 : 0
}

/**
 * The store over cluster clients: `make` gives it ioredis's, the simulation a fake cluster's. `waitReplicas` and
 * `waitTimeoutMs` as in ClusterStoreOptions (the time-out set); `replicasKnown`, what `auto` comes to when the
 * caller could ask the cluster (replicasConfigured), else the slot map decides.
 */
export const makeFrom = Effect.fn("VoteStore.cluster.makeFrom")(function* (
  clients: StoreClients,
  options: Pick<ClusterStoreOptions, "waitReplicas"> & {
    readonly waitTimeoutMs: number
    readonly replicasKnown?: number | undefined
  }
) {
  const { call, client, fenced, flusher } = clients
  const { waitTimeoutMs } = options
  const waitReplicas =
    options.waitReplicas === "auto" ? (options.replicasKnown ?? replicasAtStart(client)) : options.waitReplicas
  yield* Effect.logInfo(
    `redis cluster: a flushed batch is confirmed once ${waitReplicas} replica(s) hold it` +
      (options.waitReplicas === "auto" ? " (REDIS_WAIT_REPLICAS unset: from the cluster's shape at start)" : "")
  )

  /**
   * The parts of one batch for polls whose slots the same master serves: one script each, then one WAIT, in one
   * cluster pipeline (its keyless WAIT goes to the node its keys go to). A repeat finds each part's marker and adds
   * nothing, so the batch can be retried after any failure, on whichever node serves the slot by then.
   */
  const applyParts = (batchId: string, parts: ReadonlyArray<readonly [PollId, ReadonlyMap<OptionId, number>]>) => {
    const master = flusher.slots[slotOf(parts[0]![0])]?.[0] ?? "unknown master"
    const what = `apply batch ${batchId} on ${master}`
    return Effect.flatMap(
      call(what, () => {
        const pipeline = flusher.batchPipeline()
        for (const [pollId, increments] of parts) {
          const amounts: Array<string | number> = []
          for (const [optionId, n] of increments) amounts.push(optionId, n)
          pipeline.livepollApplyPart(batchKey(pollId, batchId), countsKey(pollId), BATCH_MEMORY_SECONDS, ...amounts)
        }
        if (waitReplicas > 0) pipeline.wait(waitReplicas, waitTimeoutMs)
        return pipeline.exec()
      }),
      (replies): Effect.Effect<void, StoreUnavailable> => {
        if (replies === null) return new StoreUnavailable({ node: REDIS_CLUSTER, reason: `${what}: no reply` })
        const failed = replies.find(([error]) => error !== null)?.[0]
        if (failed) {
          // A pipeline that was partly redirected is not resent by ioredis, nor does it refresh the slot map.
          if (replies.some(([error]) => error !== null && isRedirect(error))) flusher.refreshSlotsCache()
          return new StoreUnavailable({ node: REDIS_CLUSTER, reason: `${what} failed: ${failed.message}` })
        }
        if (waitReplicas > 0) {
          const acked = Number(replies[parts.length]![1])
          if (acked < waitReplicas) {
            return new StoreUnavailable({
              node: REDIS_CLUSTER,
              reason: `${what}: ${acked} of ${waitReplicas} replicas confirmed it within ${waitTimeoutMs} ms`
            })
          }
        }
        return Effect.void
      }
    )
  }

  /** One pipeline per master, as the client's slot map has it now; ioredis checks the same map when it sends. */
  const byMaster = (batch: Batch) =>
    groupBy(batch.increments, (pollId) => {
      const slot = slotOf(pollId)
      return flusher.slots[slot]?.join(";") ?? slot
    })

  const store: VoteStoreShape = {
    ...pollCommands({
      client,
      call,
      servedVia: REDIS_CLUSTER,
      fenced: (pollId, send) => fenced(slotOf(pollId), send),
      batchKey
    }),
    // A script may only touch keys of one slot: one read per slot, all at once, each to its slot's master.
    optionsOf: (pollIds) =>
      Effect.map(
        Effect.forEach(
          groupBy(
            pollIds.map((pollId) => [pollId, pollId] as const),
            slotOf
          ).values(),
          (group) => {
            const polls = group.map(([pollId]) => pollId)
            return Effect.map(
              call("read options", () => client.livepollOptions(polls.length, ...polls.map(countsKey))),
              (lists) => polls.map((pollId, i) => [pollId, lists[i] ?? []] as const)
            )
          },
          { concurrency: "unbounded" }
        ),
        (groups) => new Map(groups.flat())
      ),
    applyBatch: Effect.fn("VoteStore.cluster.applyBatch")(function* (batch: Batch) {
      if (batch.increments.size > MAX_POLLS_PER_BATCH) {
        return yield* Effect.dieMessage(
          `batch ${batch.id} has ${batch.increments.size} polls; at most ${MAX_POLLS_PER_BATCH}`
        )
      }
      if (flusher.status !== "ready") {
        return yield* new StoreUnavailable({ node: REDIS_CLUSTER, reason: `apply batch ${batch.id}: not connected` })
      }
      yield* Effect.forEach(byMaster(batch).values(), (parts) => applyParts(batch.id, parts), {
        concurrency: "unbounded",
        discard: true
      })
    }),
    // A confirmed batch's markers, one per poll, dropped at once rather than kept for a day: votes spread over many
    // polls would otherwise leave a key per poll per flush. (A failure leaves them to expire.)
    forgetBatch: (batch: Batch) =>
      Effect.forEach(
        byMaster(batch).values(),
        (parts) =>
          call(`forget batch ${batch.id}`, () => {
            const pipeline = flusher.batchPipeline()
            for (const [pollId] of parts) pipeline.unlink(batchKey(pollId, batch.id))
            return pipeline.exec()
          }),
        { concurrency: "unbounded", discard: true }
      ),
    partitionOf,
    health: clients.health
  }
  return store
})

/** The masters ioredis is connected to, and the masters its slot map names, each pinged. */
const health = (client: Cluster, timeoutMs: number): Effect.Effect<Health> =>
  Effect.suspend(() => {
    // A master that dropped out of the pool still owns its slots until a replica takes them over.
    const pool = new Map(client.nodes("all").map((node) => [ClusterClient.nodeKey(node), node]))
    const masters = new Set(client.nodes("master").map(ClusterClient.nodeKey))
    for (const owners of client.slots) if (owners?.[0] !== undefined) masters.add(owners[0])
    if (masters.size === 0) {
      return Effect.succeed({ nodes: [{ name: REDIS_CLUSTER, reachable: false }], pendingVotes: 0 })
    }
    return Effect.map(
      Effect.forEach(
        [...masters].sort(),
        (name) => {
          const node = pool.get(name)
          // A node's own client queues commands while it reconnects (ioredis forces its offline queue on): a node
          // that is reconnecting is down, without waiting out a PING.
          if (node === undefined || !PINGABLE.has(node.status)) return Effect.succeed({ name, reachable: false })
          return RedisClient.caller({ name, commandTimeoutMs: timeoutMs })("ping", () => node.ping()).pipe(
            Effect.match({
              onFailure: () => ({ name, reachable: false }),
              onSuccess: () => ({ name, reachable: true })
            })
          )
        },
        { concurrency: "unbounded" }
      ),
      (nodes) => ({ nodes, pendingVotes: 0 })
    )
  })

/**
 * How long a start with `REDIS_WAIT_REPLICAS` unset looks for a replica of every master before it settles for none:
 * on a cluster created a moment ago the nodes learn of their replicas within a few seconds.
 */
const REPLICA_DISCOVERY_MS = 5000

/**
 * What `auto` comes to: `CLUSTER NODES` asked of the cluster (ioredis picks a node each time), every answer so far
 * read together, again every 250 ms while one master has no replica in them.
 */
const replicasSeen = (client: Cluster, call: ReturnType<typeof RedisClient.caller>) => {
  const answers: Array<string> = []
  return call("read the cluster's nodes", () => client.cluster("NODES") as Promise<string>).pipe(
    Effect.map((text) => {
      answers.push(text)
      return replicasConfigured(...answers)
    }),
    Effect.orElseSucceed(() => replicasConfigured(...answers)),
    Effect.filterOrFail((seen) => seen === 1),
    Effect.retry(Schedule.spaced(Duration.millis(250))),
    Effect.timeoutTo({
      duration: Duration.millis(REPLICA_DISCOVERY_MS),
      onSuccess: (seen) => seen,
      onTimeout: () => replicasConfigured(...answers)
    }),
    // The retries never run out: only the time-out ends them.
    Effect.orElseSucceed(() => replicasConfigured(...answers))
  )
}

export const make = Effect.fn("VoteStore.cluster.make")(function* (options: ClusterStoreOptions) {
  const timeoutMs = RedisClient.commandTimeoutOf(options)
  // The cluster's error counters exist from the start, at 0 until a command fails (see RedisClient.caller).
  ;(yield* Metrics).redisNode(REDIS_CLUSTER)
  const client = withScripts(yield* ClusterClient.acquire(options, { role: "commands" }))
  const flusher = withScripts(yield* ClusterClient.acquire(options, { role: "batches" }))
  const fenced = yield* nodeClocks(client, timeoutMs)
  const call = RedisClient.caller({ name: REDIS_CLUSTER, commandTimeoutMs: timeoutMs })
  const replicasKnown =
    options.waitReplicas === "auto" && client.status === "ready" ? yield* replicasSeen(client, call) : undefined
  return yield* makeFrom(
    {
      client,
      flusher,
      call,
      fenced,
      health: health(client, timeoutMs)
    },
    {
      waitReplicas: options.waitReplicas,
      waitTimeoutMs: options.waitTimeoutMs ?? Math.floor(timeoutMs / 2),
      replicasKnown
    }
  )
})

export const layer = (options: ClusterStoreOptions): Layer.Layer<VoteStore> => Layer.scoped(VoteStore, make(options))
