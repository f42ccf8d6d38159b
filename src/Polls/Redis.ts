import { Duration, Effect, Layer, Option, Schedule } from "effect"
import type { Redis } from "ioredis"
import type { PollId } from "../Domain.js"
import { StoreUnavailable } from "../Domain.js"
import type { PollsShape } from "../Polls.js"
import { collectPage, Polls, positionKey, positionOf } from "../Polls.js"
import * as RedisClient from "../RedisClient.js"
import * as Ring from "../Ring.js"
import { MIGRATING_KEY, stagedKey } from "../VoteStore/Redis.js"
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
  /** The nodes of the ring an online reshard moves the polls to (`REDIS_NODES_NEXT`). */
  readonly next?: ReadonlyArray<RedisClient.RedisNode>
}

/**
 * Every instance that knows the next ring subscribes to this channel on every node (beside CREATED_CHANNEL): an online
 * reshard compares the two counts of `PUBSUB NUMSUB` to see that no instance knows the old ring alone.
 */
export const ringNextChannel = (names: Iterable<string>) =>
  `livepoll:ring-next:${Ring.murmur3([...new Set(names)].sort().join(",")).toString(16)}`

// The create of a poll whose owner differs between the rings, on its old owner: once the reshard has begun (the
// migrating flag), a new poll goes to the new ring (-2). KEYS: CREATE_SCRIPT's, then the migrating flag.
const CREATE_UNLESS_MIGRATING_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[5]) == 1 then return -2 end
${CREATE_SCRIPT.slice(CREATE_SCRIPT.indexOf("if redis.call('SCARD'"))}`

// KEYS: a live key of a poll and its staged copy (on the old owner). Both in one step: a freeze renames one to the
// other, so one of the two is seen if either exists.
const READ_OR_STAGED_SCRIPT = `return { redis.call('GET', KEYS[1]) or false, redis.call('GET', KEYS[2]) or false }`

/** Definitions and voter sets on the node the ring gives each poll (one node for the single-Redis stages). */
export const make = Effect.fn("Polls.redis.make")(function* (
  nodes: ReadonlyArray<RedisClient.RedisNode>,
  /** Definitions each node holds at most (`MAX_POLLS`). */
  maxPolls: number,
  options: PollsRedisOptions = {}
) {
  const ring = Ring.make(nodes.map((n) => n.name))
  const next = options.next
  const nextRing = next === undefined ? undefined : Ring.make(next.map((n) => n.name))
  // Both rings' nodes, each once (the old ring's first).
  const all = [...nodes, ...(next ?? []).filter((n) => !nodes.some((o) => o.name === n.name))]
  const clients = new Map<string, NodeClient>(
    yield* Effect.forEach(all, (node) =>
      Effect.map(RedisClient.acquire(node), (client) => {
        client.defineCommand("livepollClose", { numberOfKeys: 1, lua: CLOSE_SCRIPT })
        client.defineCommand("livepollCreate", { numberOfKeys: 4, lua: CREATE_SCRIPT })
        client.defineCommand("livepollCreateUnlessMigrating", { numberOfKeys: 5, lua: CREATE_UNLESS_MIGRATING_SCRIPT })
        client.defineCommand("livepollReadOrStaged", { numberOfKeys: 2, lua: READ_OR_STAGED_SCRIPT })
        return [node.name, { name: node.name, client, call: RedisClient.caller(node) }] as const
      })
    )
  )
  const nodeFor = (pollId: PollId) => clients.get(Ring.nodeFor(ring, pollId))!
  /** The new owner of a poll whose owner differs between the rings; undefined for every other poll. */
  const movingTo = (pollId: string) => {
    if (nextRing === undefined) return undefined
    const to = Ring.nodeFor(nextRing, pollId)
    return to === Ring.nodeFor(ring, pollId) ? undefined : clients.get(to)!
  }
  const scripts = (client: Redis) =>
    client as unknown as {
      livepollClose: (key: string) => Promise<string | null>
      livepollCreate: (...a: Array<string>) => Promise<number>
      livepollCreateUnlessMigrating: (...a: Array<string>) => Promise<number>
      livepollReadOrStaged: (live: string, staged: string) => Promise<[string | null, string | null]>
    }
  /**
   * A key of a moving poll: on its old owner, live or (frozen by the reshard) staged, else on the new owner. Live
   * on the old owner first, then the new owner's, then the staged copy read with the first step: no window misses it.
   */
  const followed = (
    what: string,
    pollId: PollId,
    to: NodeClient,
    live: string,
    part: "definition" | "organiser"
  ): Effect.Effect<string | null, StoreUnavailable> => {
    const { client, call } = nodeFor(pollId)
    return Effect.flatMap(
      call(what, () => scripts(client).livepollReadOrStaged(live, stagedKey(pollId, part))),
      ([here, staged]) =>
        here !== null
          ? Effect.succeed(here)
          : Effect.map(
              to.call(what, () => to.client.get(live)),
              (there) => there ?? staged
            )
    )
  }
  const known = yield* makeKnown({
    definition: (pollId) => {
      const to = movingTo(pollId)
      if (to !== undefined) return followed("read poll", pollId, to, definitionKey(pollId), "definition")
      const { client, call } = nodeFor(pollId)
      return call("read poll", () => client.get(definitionKey(pollId)))
    },
    organiserKeyHash: (pollId) => {
      const to = movingTo(pollId)
      if (to !== undefined) return followed("read organiser key", pollId, to, organiserKey(pollId), "organiser")
      const { client, call } = nodeFor(pollId)
      return call("read organiser key", () => client.get(organiserKey(pollId)))
    },
    markClosed: (pollId) => {
      const { client, call } = nodeFor(pollId)
      const close = call("close poll", () => scripts(client).livepollClose(definitionKey(pollId)))
      const to = movingTo(pollId)
      if (to === undefined) return close
      // Not on the old owner: on the new one, unless it is frozen and not merged yet (then a 503: try again).
      return Effect.flatMap(close, (text) =>
        text !== null
          ? Effect.succeed(text)
          : Effect.flatMap(
              to.call("close poll", () => scripts(to.client).livepollClose(definitionKey(pollId))),
              (there) =>
                there !== null
                  ? Effect.succeed(there)
                  : Effect.flatMap(
                      call("read poll", () => client.exists(stagedKey(pollId, "definition"))),
                      (staged): Effect.Effect<string | null, StoreUnavailable> =>
                        staged === 1
                          ? new StoreUnavailable({ node: to.name, reason: "the poll is moving here" })
                          : Effect.succeed(null)
                    )
            )
      )
    },
    holder: (pollId) => `node ${(movingTo(pollId) ?? nodeFor(pollId)).name}`
  })

  // Each node's index of its defined polls, with announcements and acks on the node itself (see `makeKnown`).
  const resync = Effect.forEach(
    clients.values(),
    ({ client, call }) => known.learn(call("list polls", () => client.smembers(INDEX_KEY))),
    { discard: true }
  )
  const channels = [CREATED_CHANNEL, CLOSED_CHANNEL, ACK_CHANNEL]
  if (next !== undefined) channels.push(ringNextChannel(next.map((n) => n.name)))
  for (const node of all) {
    const subscriber = yield* RedisClient.acquire(node, { subscriber: true })
    const { client, call } = clients.get(node.name)!
    subscriber.on("message", (channel: string, pollId: string) => {
      if (channel !== ACK_CHANNEL && channel !== CREATED_CHANNEL && channel !== CLOSED_CHANNEL) return
      known.heard(channel === ACK_CHANNEL ? "ack" : channel === CREATED_CHANNEL ? "created" : "closed", pollId, () =>
        call("confirm poll", () => client.publish(ACK_CHANNEL, pollId))
      )
    })
    // Subscribed before the first read of the index, and before this instance serves: a poll created in between
    // would otherwise be announced to the other instances only, and taken here for an ad-hoc one until the next
    // resync. A node that is down does not hold up the start (ioredis subscribes again once it is back).
    yield* Effect.promise(() => subscriber.subscribe(...channels).catch(() => 0)).pipe(
      Effect.timeout(Duration.millis(SUBSCRIBE_WAIT_MS)),
      Effect.ignore
    )
  }
  yield* resync
  yield* resync.pipe(
    Effect.schedule(Schedule.spaced(Duration.millis(options.resyncMs ?? RESYNC_MS))),
    Effect.forkScoped
  )

  /**
   * A node's created index; an entry of a poll the ring gives another node was left behind by a move. While the ring
   * grows, either ring's owner lists it, a frozen poll by its staged definition (the same poll listed twice, on both
   * owners, is shown once).
   */
  const source = ({ name, client, call }: NodeClient) =>
    listSource(
      call,
      (max, count) => client.zrange(CREATED_KEY, max, "-", "BYLEX", "REV", "LIMIT", 0, count),
      nextRing === undefined
        ? (ids) => client.mget(ids.map(definitionKey))
        : async (ids) => {
            const [live, staged] = await Promise.all([
              client.mget(ids.map(definitionKey)),
              client.mget(ids.map((id) => stagedKey(id, "definition")))
            ])
            return live.map((text, i) => text ?? staged[i] ?? null)
          },
      nextRing === undefined
        ? (id) => Ring.nodeFor(ring, id) === name
        : (id) => Ring.nodeFor(ring, id) === name || Ring.nodeFor(nextRing, id) === name
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
      const args = [
        definitionKey(poll.id),
        INDEX_KEY,
        organiserKey(poll.id),
        CREATED_KEY,
        JSON.stringify(poll),
        poll.id,
        keyHash,
        String(maxPolls),
        positionKey(positionOf(poll))
      ]
      const on = ({ client, call }: NodeClient) => call("create poll", () => scripts(client).livepollCreate(...args))
      const to = movingTo(poll.id)
      const { client, call } = nodeFor(poll.id)
      // A poll whose owner differs between the rings: on the old owner until the reshard begins, then on the new one.
      const write =
        to === undefined
          ? on(nodeFor(poll.id))
          : Effect.flatMap(
              call("create poll", () =>
                scripts(client).livepollCreateUnlessMigrating(...args.slice(0, 4), MIGRATING_KEY, ...args.slice(4))
              ),
              (result) => (result === -2 ? on(to) : Effect.succeed(result))
            )
      return known.announced(
        poll,
        write.pipe(Effect.flatMap((result) => written(poll.id, maxPolls, result, Effect.succeed(result))))
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
