import { Duration, Effect, Layer, Option, Runtime, Schedule } from "effect"
import type { Cluster } from "ioredis"
import type { PollDefinition, StoreUnavailable } from "../Domain.js"
import type { PollsShape } from "../Polls.js"
import { collectPage, Polls, positionKey, positionOf } from "../Polls.js"
import * as RedisClient from "../RedisClient.js"
import * as ClusterClient from "../RedisClient/Cluster.js"
import { REDIS_CLUSTER } from "../VoteStore/Cluster.js"
import { definitionKey, organiserKey, RESYNC_MS } from "./Redis.js"
import { type Announcement, closeScript, decodeOption, listSource, makeKnown, written } from "./Shared.js"

export { definitionKey, organiserKey }

/** Per group: the ids of its defined polls (`livepoll:polls` of the other stages, split by group). */
export const indexKey = (group: number) => `livepoll:polls:${ClusterClient.groupTag(group)}`
/** Per group: its polls in the listing's order (members `<created_at in ms, 16 digits>:<id>`, score 0, as elsewhere). */
export const createdKey = (group: number) => `livepoll:polls:created:${ClusterClient.groupTag(group)}`
export const createdChannel = (group: number) => `livepoll:poll-created:${ClusterClient.groupTag(group)}`
const closedChannel = (group: number) => `livepoll:poll-closed:${ClusterClient.groupTag(group)}`
const ackChannel = (group: number) => `livepoll:poll-created-ack:${ClusterClient.groupTag(group)}`
/** Keys each resync looks at per master for definitions missing from their group's index (see `repair`). */
export const REPAIR_SCAN_COUNT = 1000
/**
 * A definition missing from its group's index is added only once it is this old by its `created_at`: younger, its
 * `create` may still be under way, and may yet take it back (see `create`).
 */
export const REPAIR_AGE_MS = 60_000

// KEYS: definition, organiser key hash (the poll's slot). ARGV: definition, key hash, 1 when the cluster holds as many
// definitions as it may. 0: the id is taken; -1: no room.
const DEFINE_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if ARGV[3] == '1' then return -1 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return 1`

// KEYS: the group's index and created index. ARGV: poll id, position key, the group's created channel (same slot).
// Adding twice changes nothing. 1 + the number of connections the announcement reached: one per instance.
const INDEX_SCRIPT = `
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return 1 + redis.call('SPUBLISH', ARGV[3], ARGV[1])`

// KEYS: definition, organiser key hash. ARGV: the definition and key hash one `create` wrote: takes them back only if
// they are still those (a poll defined again since is left alone).
const UNDEFINE_SCRIPT = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1`

// The announcement goes out after the script, to the group's channel: not the poll's slot (see `close`).
const CLOSE_SCRIPT = closeScript()

interface Scripts {
  livepollDefine(definition: string, organiser: string, poll: string, keyHash: string, full: string): Promise<number>
  livepollIndex(index: string, created: string, pollId: string, position: string, channel: string): Promise<number>
  livepollUndefine(definition: string, organiser: string, poll: string, keyHash: string): Promise<number>
  livepollClose(definition: string): Promise<string | null>
}

const withScripts = (client: Cluster): Cluster & Scripts => {
  client.defineCommand("livepollDefine", { numberOfKeys: 2, lua: DEFINE_SCRIPT })
  client.defineCommand("livepollIndex", { numberOfKeys: 2, lua: INDEX_SCRIPT })
  client.defineCommand("livepollUndefine", { numberOfKeys: 2, lua: UNDEFINE_SCRIPT })
  client.defineCommand("livepollClose", { numberOfKeys: 1, lua: CLOSE_SCRIPT })
  return client as Cluster & Scripts
}

/** The id in a definition key; undefined for a key that only looks like one. */
const idOfDefinitionKey = (key: string): string | undefined => {
  const id = key.startsWith("poll:{") && key.endsWith("}:definition") ? key.slice(6, -12) : ""
  return id !== "" && !id.includes("}") ? id : undefined
}

export interface PollsClusterOptions extends ClusterClient.ClusterClientOptions {
  /** How often the groups' indexes are read again, for announcements missed (`DEFINITIONS_RESYNC_MS`). */
  readonly resyncMs?: number
}

/**
 * Definitions on a Redis Cluster: each beside its poll's counts (same hash tag, same slot), the index of defined polls
 * and the listing order split over `GROUPS` groups, each in the slot of its own tag. No script can write both a poll's
 * slot and its group's, so `create` takes two steps: the definition, atomically in the poll's slot (what readers
 * trust), then the group's index entry with its announcement (idempotent); a crash between them is repaired by the
 * resync. Announcements go over sharded pub/sub, one channel per group and kind.
 */
export const make = Effect.fn("Polls.cluster.make")(function* (
  options: PollsClusterOptions,
  /** Definitions the cluster holds at most (`MAX_POLLS`), as this instance counts them (see `create`). */
  maxPolls: number
) {
  const resyncMs = options.resyncMs ?? RESYNC_MS
  const runFork = Runtime.runFork(yield* Effect.runtime<never>())
  const client = withScripts(yield* ClusterClient.acquire(options, { role: "definitions" }))
  const subscriber = yield* ClusterClient.acquire(options, { role: "poll announcements", subscriber: true })
  const call = RedisClient.caller({ name: REDIS_CLUSTER, commandTimeoutMs: RedisClient.commandTimeoutOf(options) })
  const known = yield* makeKnown({
    definition: (pollId) => call("read poll", () => client.get(definitionKey(pollId))),
    organiserKeyHash: (pollId) => call("read organiser key", () => client.get(organiserKey(pollId))),
    markClosed: (pollId) => call("close poll", () => client.livepollClose(definitionKey(pollId))),
    holder: () => "the cluster"
  })
  const defined = known.defined

  // Announcements and acks go over each group's channels (see `makeKnown`).
  const channels = new Map<string, { readonly kind: Announcement; readonly group: number }>()
  for (const group of ClusterClient.allGroups) {
    channels.set(createdChannel(group), { kind: "created", group })
    channels.set(closedChannel(group), { kind: "closed", group })
    channels.set(ackChannel(group), { kind: "ack", group })
  }
  subscriber.on("smessage", (channel: string, pollId: string) => {
    const from = channels.get(channel)
    if (from === undefined) return
    known.heard(from.kind, pollId, () => call("confirm poll", () => client.spublish(ackChannel(from.group), pollId)))
  })
  // Subscribed before the first read of the indexes, and before this instance serves: a poll created in between would
  // otherwise be announced to the other instances only, and taken here for an ad-hoc one until the next resync.
  yield* ClusterClient.subscribe(
    subscriber,
    ClusterClient.allGroups.map((group) => [createdChannel(group), closedChannel(group), ackChannel(group)])
  )

  const readIndexes = Effect.forEach(
    ClusterClient.allGroups,
    (group) => known.learn(call("list polls", () => client.smembers(indexKey(group)))),
    { concurrency: "unbounded", discard: true }
  )

  /** Adds a defined poll to its group's index and announces it, for a `create` and for the repair alike. */
  const index = (poll: PollDefinition) => {
    const group = ClusterClient.groupOf(poll.id)
    return call("index poll", () =>
      client.livepollIndex(
        indexKey(group),
        createdKey(group),
        poll.id,
        positionKey(positionOf(poll)),
        createdChannel(group)
      )
    )
  }

  /**
   * A `create` that stopped between its two steps (a crash, or its take-back failing too) leaves a definition that no
   * index names. Each resync scans every master for definition keys, REPAIR_SCAN_COUNT keys at a time, going on from
   * where the last resync stopped: a whole pass over a master of K keys takes about K / REPAIR_SCAN_COUNT resyncs. A
   * definition none of the indexes this instance read names, and older than REPAIR_AGE_MS, is indexed and announced.
   */
  const cursors = new Map<string, string>()
  const repairPoll = (id: string) =>
    Effect.flatMap(
      call("read poll", () => client.get(definitionKey(id))),
      (text) => {
        const poll = text === null ? Option.none() : decodeOption(text)
        if (Option.isNone(poll) || poll.value.id !== id || defined.has(id)) return Effect.void
        if (Date.now() - positionOf(poll.value).createdAtMs < REPAIR_AGE_MS) return Effect.void
        return Effect.zipRight(
          index(poll.value),
          Effect.logWarning(`poll ${id} was defined but missing from the index of its group: added`)
        )
      }
    )
  const repair = Effect.suspend(() => {
    const masters = client.nodes("master").filter((node) => node.status === "ready")
    const keys = new Set(masters.map(ClusterClient.nodeKey))
    for (const key of cursors.keys()) if (!keys.has(key)) cursors.delete(key)
    return Effect.forEach(
      masters,
      (node) => {
        const at = ClusterClient.nodeKey(node)
        return call("scan polls", () =>
          node.scan(cursors.get(at) ?? "0", "MATCH", "poll:{*}:definition", "COUNT", REPAIR_SCAN_COUNT)
        ).pipe(
          Effect.flatMap(([next, found]) => {
            cursors.set(at, next)
            const missing = found.flatMap((key) => {
              const id = idOfDefinitionKey(key)
              return id === undefined || defined.has(id) ? [] : [id]
            })
            return Effect.forEach(missing, (id) => Effect.ignore(repairPoll(id)), { discard: true })
          }),
          Effect.ignore
        )
      },
      { concurrency: "unbounded", discard: true }
    )
  })

  yield* readIndexes
  yield* Effect.zipRight(readIndexes, repair).pipe(
    Effect.schedule(Schedule.spaced(Duration.millis(resyncMs))),
    Effect.forkScoped
  )

  /**
   * A group's created index, with each entry's definition (one GET each: a cluster's MGET must keep to one slot); an
   * entry of a poll of another group is stale.
   */
  const source = (group: number) =>
    listSource(
      call,
      (max, count) => client.zrange(createdKey(group), max, "-", "BYLEX", "REV", "LIMIT", 0, count),
      (ids) => Promise.all(ids.map((id) => client.get(definitionKey(id)))),
      (id) => ClusterClient.groupOf(id) === group
    )
  const sources = ClusterClient.allGroups.map(source)

  const shape: PollsShape = {
    ...known.shape,
    /**
     * Two steps, each atomic in its own slot: the definition (refused if the id is taken), then the group's index
     * entry and announcement. When the second fails, the first is taken back, so the 503 leaves nothing defined and
     * a retry can define the poll anew; a take-back that fails too leaves the definition to the repair. The bound
     * is checked against the polls this instance knows of, a count no script can see: creates on several instances
     * at once may pass it by as many as they are.
     */
    create: (poll, keyHash) => {
      const group = ClusterClient.groupOf(poll.id)
      const definition = JSON.stringify(poll)
      const takeBack = (failure: StoreUnavailable) =>
        call("take back poll", () =>
          client.livepollUndefine(definitionKey(poll.id), organiserKey(poll.id), definition, keyHash)
        ).pipe(
          Effect.catchAll((e) =>
            Effect.logError(
              `poll ${poll.id} is defined but not in the index of group ${group}, and could not be taken back ` +
                `(${e.reason}); the resync adds it once it is ${REPAIR_AGE_MS} ms old`
            )
          ),
          Effect.zipRight(Effect.fail(failure))
        )
      return known.announced(
        poll,
        call("create poll", () =>
          client.livepollDefine(
            definitionKey(poll.id),
            organiserKey(poll.id),
            definition,
            keyHash,
            defined.size >= maxPolls ? "1" : "0"
          )
        ).pipe(
          Effect.flatMap((result) => written(poll.id, maxPolls, result, index(poll).pipe(Effect.catchAll(takeBack))))
        )
      )
    },
    list: (query) => collectPage(sources, query),
    close: (pollId, key) =>
      known.shape.close(pollId, key).pipe(
        // The close holds whether or not the others hear of it (an instance that does not drops its cached copy
        // within the cache's lifetime), so it does not wait for the announcement: the group's master may be down.
        Effect.tap((poll) =>
          Effect.sync(() =>
            runFork(
              Effect.ignore(
                call("announce close", () => client.spublish(closedChannel(ClusterClient.groupOf(pollId)), poll.id))
              )
            )
          )
        )
      )
  }
  return shape
})

export const layer = (options: PollsClusterOptions, maxPolls: number): Layer.Layer<Polls> =>
  Layer.scoped(Polls, make(options, maxPolls))
