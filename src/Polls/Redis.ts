import { Duration, Effect, Layer, Option, Schedule } from "effect"
import type { Redis } from "ioredis"
import type { PollId } from "../Domain.js"
import type { PollsShape } from "../Polls.js"
import { collectPage, Polls, positionKey, positionOf } from "../Polls.js"
import * as RedisClient from "../RedisClient.js"
import * as Ring from "../Ring.js"
import { closeScript, decodeOption, listSource, makeKnown, written } from "./Shared.js"

/** Beside `poll:{id}:counts`: same hash tag, so the same node and the same Redis Cluster slot. */
export const definitionKey = (pollId: string) => `poll:{${pollId}}:definition`
/** The SHA-256 of the poll's organiser key (hex); the key itself is never stored. */
export const organiserKey = (pollId: string) => `poll:{${pollId}}:organiser`
/** Per node: the ids of the polls defined there, so an instance knows without a round trip that a poll is ad hoc. */
export const INDEX_KEY = "livepoll:polls"
/**
 * Per node: the polls defined there in the listing's order, for paging without reading them all. Every member has
 * score 0 and is the poll's `positionKey` (`<created_at in ms, 16 digits>:<id>`), so the set's lex order is the
 * listing's and a page is one `ZRANGE … BYLEX REV LIMIT` from its cursor. (A Redis Cluster holds one such set per
 * slot group instead, say `livepoll:polls:created:{<n>}`: this name leaves room for the suffix.)
 */
export const CREATED_KEY = "livepoll:polls:created"
/** Polls whose created index entry is missing (defined before it existed) are added this many at a time at start. */
const BACKFILL_CHUNK = 200
/** Every instance subscribes to it on every node: `PUBSUB NUMSUB` counts the instances connected. */
export const CREATED_CHANNEL = "livepoll:poll-created"
const CLOSED_CHANNEL = "livepoll:poll-closed"
const ACK_CHANNEL = "livepoll:poll-created-ack"
/** The default of `DEFINITIONS_RESYNC_MS`. */
export const RESYNC_MS = 5000
/** How long the start waits for a node to confirm the subscriptions (a node that is down does not confirm). */
const SUBSCRIBE_WAIT_MS = 1000

// KEYS: definition, index, organiser key hash, created index. ARGV: definition, poll id, key hash, most definitions
// per node, position key. 0: the id is taken; -1: the node holds as many definitions as it may.
const CREATE_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then return -1 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[4], 0, ARGV[5])
return 1 + redis.call('PUBLISH', '${CREATED_CHANNEL}', ARGV[2])`

const CLOSE_SCRIPT = closeScript(`redis.call('PUBLISH', '${CLOSED_CHANNEL}', decoded.id)`)

interface NodeClient {
  readonly name: string
  readonly client: Redis
  readonly call: ReturnType<typeof RedisClient.caller>
}

export interface PollsRedisOptions {
  /** How often the index of defined polls is read again, for announcements missed (`DEFINITIONS_RESYNC_MS`). */
  readonly resyncMs?: number
}

/** Definitions and voter sets on the node the ring gives each poll (one node for the single-Redis stages). */
export const make = Effect.fn("Polls.redis.make")(function* (
  nodes: ReadonlyArray<RedisClient.RedisNode>,
  /** Definitions each node holds at most (`MAX_POLLS`). */
  maxPolls: number,
  options: PollsRedisOptions = {}
) {
  const ring = Ring.make(nodes.map((n) => n.name))
  const clients = new Map<string, NodeClient>(
    yield* Effect.forEach(nodes, (node) =>
      // Voter checks sit on the vote path: commands of one tick share a round trip.
      Effect.map(RedisClient.acquire(node, { autoPipelining: true }), (client) => {
        client.defineCommand("livepollClose", { numberOfKeys: 1, lua: CLOSE_SCRIPT })
        client.defineCommand("livepollCreate", { numberOfKeys: 4, lua: CREATE_SCRIPT })
        return [node.name, { name: node.name, client, call: RedisClient.caller(node) }] as const
      })
    )
  )
  const nodeFor = (pollId: PollId) => clients.get(Ring.nodeFor(ring, pollId))!
  const known = yield* makeKnown({
    definition: (pollId) => {
      const { client, call } = nodeFor(pollId)
      return call("read poll", () => client.get(definitionKey(pollId)))
    },
    organiserKeyHash: (pollId) => {
      const { client, call } = nodeFor(pollId)
      return call("read organiser key", () => client.get(organiserKey(pollId)))
    },
    markClosed: (pollId) => {
      const { client, call } = nodeFor(pollId)
      return call("close poll", () =>
        (client as unknown as { livepollClose: (key: string) => Promise<string | null> }).livepollClose(
          definitionKey(pollId)
        )
      )
    },
    holder: (pollId) => `node ${Ring.nodeFor(ring, pollId)}`
  })

  // Each node's index of its defined polls, with announcements and acks on the node itself (see `makeKnown`).
  const resync = Effect.forEach(
    clients.values(),
    ({ client, call }) => known.learn(call("list polls", () => client.smembers(INDEX_KEY))),
    { discard: true }
  )
  for (const node of nodes) {
    const subscriber = yield* RedisClient.acquire(node, { subscriber: true })
    const { client, call } = clients.get(node.name)!
    subscriber.on("message", (channel: string, pollId: string) =>
      known.heard(channel === ACK_CHANNEL ? "ack" : channel === CREATED_CHANNEL ? "created" : "closed", pollId, () =>
        call("confirm poll", () => client.publish(ACK_CHANNEL, pollId))
      )
    )
    // Subscribed before the first read of the index, and before this instance serves: a poll created in between
    // would otherwise be announced to the other instances only, and taken here for an ad-hoc one until the next
    // resync. A node that is down does not hold up the start (ioredis subscribes again once it is back).
    yield* Effect.promise(() => subscriber.subscribe(CREATED_CHANNEL, CLOSED_CHANNEL, ACK_CHANNEL).catch(() => 0)).pipe(
      Effect.timeout(Duration.millis(SUBSCRIBE_WAIT_MS)),
      Effect.ignore
    )
  }
  yield* resync
  yield* resync.pipe(
    Effect.schedule(Schedule.spaced(Duration.millis(options.resyncMs ?? RESYNC_MS))),
    Effect.forkScoped
  )

  /** A node's created index; an entry of a poll the ring gives another node was left behind by a move. */
  const source = ({ name, client, call }: NodeClient) =>
    listSource(
      call,
      (max, count) => client.zrange(CREATED_KEY, max, "-", "BYLEX", "REV", "LIMIT", 0, count),
      (ids) => client.mget(ids.map(definitionKey)),
      (id) => Ring.nodeFor(ring, id) === name
    )
  const sources = [...clients.values()].map(source)

  /**
   * Polls defined before the created index existed are not in it: at start, a node whose index holds fewer entries
   * than its set of defined polls has them added, BACKFILL_CHUNK at a time, in the background (tried again every
   * resync until it has run once). Each entry is made from the definition, so adding one twice changes nothing.
   */
  const backfill = Effect.fnUntraced(function* ({ name, client, call }: NodeClient) {
    const [defined, indexed] = yield* Effect.all([
      call("count polls", () => client.scard(INDEX_KEY)),
      call("count listed polls", () => client.zcard(CREATED_KEY))
    ])
    if (indexed >= defined) return
    let cursor = "0"
    let added = 0
    do {
      const [next, ids] = yield* call("scan polls", () => client.sscan(INDEX_KEY, cursor, "COUNT", BACKFILL_CHUNK))
      cursor = next
      if (ids.length === 0) continue
      const texts = yield* call("read polls", () => client.mget(ids.map(definitionKey)))
      const keys = texts.flatMap((text) => {
        const poll = text === null ? Option.none() : decodeOption(text)
        return Option.isSome(poll) ? [positionKey(positionOf(poll.value))] : []
      })
      if (keys.length === 0) continue
      added += yield* call("index polls", () => client.zadd(CREATED_KEY, ...keys.flatMap((key) => [0, key])))
    } while (cursor !== "0")
    yield* Effect.logInfo(`node ${name}: ${added} polls defined earlier added to the listing`)
  })
  yield* Effect.forEach(
    clients.values(),
    (node) =>
      backfill(node).pipe(
        Effect.retry(Schedule.spaced(Duration.millis(options.resyncMs ?? RESYNC_MS))),
        Effect.forkScoped
      ),
    { discard: true }
  )

  const shape: PollsShape = {
    ...known.shape,
    create: (poll, keyHash) => {
      const { client, call } = nodeFor(poll.id)
      const create = (client as unknown as { livepollCreate: (...a: Array<string>) => Promise<number> }).livepollCreate
      return known.announced(
        poll,
        call("create poll", () =>
          create.call(
            client,
            definitionKey(poll.id),
            INDEX_KEY,
            organiserKey(poll.id),
            CREATED_KEY,
            JSON.stringify(poll),
            poll.id,
            keyHash,
            String(maxPolls),
            positionKey(positionOf(poll))
          )
        ).pipe(Effect.flatMap((result) => written(poll.id, maxPolls, result, Effect.succeed(result))))
      )
    },
    list: (query) => collectPage(sources, query)
  }
  return shape
})

export const layer = (
  nodes: ReadonlyArray<RedisClient.RedisNode>,
  maxPolls: number,
  options: PollsRedisOptions = {}
): Layer.Layer<Polls> => Layer.scoped(Polls, make(nodes, maxPolls, options))
