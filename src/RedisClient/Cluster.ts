import { Duration, Effect, Fiber, Runtime, Schedule, type Scope } from "effect"
import { Cluster, type ClusterOptions, type Redis } from "ioredis"
import * as RedisClient from "../RedisClient.js"

export const SLOTS = 16_384

const CRC16_TABLE = (() => {
  const table = new Uint16Array(256)
  for (let i = 0; i < 256; i++) {
    let crc = i << 8
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1
    table[i] = crc & 0xffff
  }
  return table
})()

/**
 * The slot of a poll's keys: CRC16 (XMODEM) of the hash tag, that is the poll id (ids have no braces), mod 16384.
 * Computed here because ioredis keeps its own (`cluster-key-slot`) to itself.
 */
export const slotOf = (pollId: string): number => {
  let crc = 0
  for (const byte of Buffer.from(pollId)) crc = ((crc << 8) & 0xffff) ^ CRC16_TABLE[((crc >> 8) ^ byte) & 0xff]!
  return crc % SLOTS
}

/**
 * Definitions, listings, announcements and change signals are split into this many groups of polls, each under a hash
 * tag of its own (`{g<n>}`), so no one key or channel carries every poll. A group is a range of slots (the write-behind
 * partitions of `VoteStore/Cluster.ts` are the same ranges); its keys live in the slot of its tag, which is not the
 * slot of its polls.
 */
export const GROUPS = 16

export const groupOf = (pollId: string): number => Math.floor((slotOf(pollId) * GROUPS) / SLOTS)

/** The hash tag of a group's keys and channels: whatever follows it, they share one slot. */
export const groupTag = (group: number): string => `{g${group}}`

export const allGroups: ReadonlyArray<number> = Array.from({ length: GROUPS }, (_, group) => group)

/** The start waits at most this long for the cluster, and for its subscriptions; a cluster that is down does not hold it up. */
export const READY_WAIT_MS = 1000
/** An SSUBSCRIBE that ioredis turned away (the cluster not ready yet) is sent again after this. */
const SUBSCRIBE_RETRY_MS = 200
/**
 * How often a subscriber client reads the slot map. It sends no commands, so no MOVED tells it of a failover, and
 * ioredis keeps its subscriptions on the old master: after a graceful one that node, a replica now, still delivers
 * (sharded messages are replicated), but a master's SPUBLISH counts only its own subscribers, and acks waited for by
 * that count would not wait for the instances left behind. Reading the map moves the subscriptions to the new master.
 */
const SUBSCRIBER_SLOTS_REFRESH_MS = 1000

export interface ClusterClientOptions {
  /** Any nodes of the cluster (`redis://host:port`); the rest are found from them. */
  readonly seeds: ReadonlyArray<string>
  /** How long a command may go unanswered before it fails; RedisClient.COMMAND_TIMEOUT_MS if unset. */
  readonly commandTimeoutMs?: number
}

export interface ConnectOptions {
  /** Which client of its layer: in logs. */
  readonly role: string
  /**
   * A client for sharded pub/sub (`SSUBSCRIBE`): one connection per master that serves a subscribed channel, which
   * ioredis moves to the channel's new master after a failover and subscribes again once a master is back.
   */
  readonly subscriber?: boolean
}

/** A node's address as ioredis names it in `slots` and its pool. */
export const nodeKey = (node: Redis): string => `${node.options.host}:${node.options.port}`

const startupNodes = (seeds: ReadonlyArray<string>) =>
  seeds.map((seed) => {
    const url = new URL(seed)
    return { host: url.hostname, port: url.port === "" ? 6379 : Number(url.port) }
  })

/** Credentials of the first seed, for every node: ioredis gives a seed URL's password to that seed only. */
const credentials = (seeds: ReadonlyArray<string>) => {
  const url = seeds[0] === undefined ? undefined : new URL(seeds[0])
  return {
    ...(url?.username ? { username: decodeURIComponent(url.username) } : {}),
    ...(url?.password ? { password: decodeURIComponent(url.password) } : {})
  }
}

/**
 * An ioredis Cluster client in the current scope, quit when the scope closes. Commands fail at once while the cluster
 * is not ready (no offline queue: its commands would ignore the command time-out, ioredis#1604) and each command
 * times out on its node; nodes that drop are reconnected by themselves (by default ioredis waits for a MOVED).
 */
export const acquire = (
  options: ClusterClientOptions,
  connect: ConnectOptions
): Effect.Effect<Cluster, never, Scope.Scope> =>
  Effect.gen(function* () {
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const clusterOptions: ClusterOptions = {
      lazyConnect: true,
      enableOfflineQueue: false,
      shardedSubscribers: connect.subscriber === true,
      ...(connect.subscriber ? { slotsRefreshInterval: SUBSCRIBER_SLOTS_REFRESH_MS } : {}),
      clusterRetryStrategy: RedisClient.retryDelay,
      clusterNodeRetryStrategy: RedisClient.retryDelay,
      redisOptions: {
        ...credentials(options.seeds),
        // A subscription waits for its messages: only commands time out.
        ...(connect.subscriber ? {} : { commandTimeout: RedisClient.commandTimeoutOf(options) }),
        connectTimeout: READY_WAIT_MS,
        maxRetriesPerRequest: 1
      }
    }
    const client = yield* RedisClient.scoped(() => new Cluster(startupNodes(options.seeds), clusterOptions))
    let ready: boolean | undefined = undefined
    client.on("ready", () => {
      ready = true
      runFork(
        Effect.logInfo(`redis cluster connected (${connect.role})`).pipe(Effect.annotateLogs("seeds", options.seeds))
      )
    })
    const lost = (error: Error) => {
      if (ready !== false) {
        ready = false
        runFork(Effect.logWarning(`redis cluster unreachable (${connect.role}): ${error.message}`))
      }
    }
    client.on("error", lost)
    client.on("node error", (error: Error, key: string) =>
      runFork(Effect.logDebug(`redis cluster node ${key}: ${error.message}`))
    )
    yield* Effect.async<void>((resume) => {
      const timer = setTimeout(() => resume(Effect.void), READY_WAIT_MS)
      client.connect().then(
        () => {
          clearTimeout(timer)
          resume(Effect.void)
        },
        (error: Error) => {
          clearTimeout(timer)
          lost(error)
          resume(Effect.void)
        }
      )
    })
    return client
  })

/**
 * Errors of an SSUBSCRIBE that ioredis refused before taking note of its channels (the cluster or the slot's
 * subscriber not there yet): only these are worth sending again. Once noted, ioredis subscribes again by itself
 * whenever it rebuilds its subscribers, and a second note would only repeat the channels in its list.
 */
const notTaken = (error: unknown) => {
  const message = error instanceof Error ? error.message : String(error)
  return error instanceof TypeError || message.includes("isn't ready") || message.includes("No sharded subscriber")
}

/**
 * Subscribes a `subscriber` client (see `acquire`) to each list of channels, one SSUBSCRIBE per list (a list names
 * channels of one slot only), trying a refused one again until ioredis takes it. Waits at most READY_WAIT_MS for the
 * answers, so a cluster that is down does not hold up the start; the tries go on in the current scope.
 */
export const subscribe = (
  subscriber: Cluster,
  channels: ReadonlyArray<ReadonlyArray<string>>
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function* () {
    const fibers = yield* Effect.forEach(channels, (list) =>
      Effect.tryPromise(() => subscriber.ssubscribe(...list)).pipe(
        Effect.retry({ while: (e) => notTaken(e.error), schedule: Schedule.spaced(SUBSCRIBE_RETRY_MS) }),
        Effect.ignore,
        Effect.forkScoped
      )
    )
    yield* Fiber.joinAll(fibers).pipe(Effect.timeout(Duration.millis(READY_WAIT_MS)), Effect.ignore)
  })
