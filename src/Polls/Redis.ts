import { Duration, Effect, Layer, Option, Runtime, Schedule, Schema } from "effect"
import type { Redis } from "ioredis"
import type { PollId, StoreUnavailable } from "../Domain.js"
import { DefinitionLost, PollDefinition, PollExists, PollNotFound, TooManyPolls } from "../Domain.js"
import type { CloseError, ListEntry, ListSource, PollsShape } from "../Polls.js"
import { checkOrganiserKey, collectPage, Polls, positionKey, positionOf, positionOfKey } from "../Polls.js"
import * as RedisClient from "../RedisClient.js"
import * as Ring from "../Ring.js"

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
const CREATED_CHANNEL = "livepoll:poll-created"
const CLOSED_CHANNEL = "livepoll:poll-closed"
const ACK_CHANNEL = "livepoll:poll-created-ack"
/** How long `create` waits for every instance to confirm it knows the new poll (see `create`). */
const ACK_WAIT_MS = 1000
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

const CLOSE_SCRIPT = `
local poll = redis.call('GET', KEYS[1])
if not poll then return false end
local decoded = cjson.decode(poll)
decoded.closed = true
local encoded = cjson.encode(decoded)
redis.call('SET', KEYS[1], encoded)
redis.call('PUBLISH', '${CLOSED_CHANNEL}', decoded.id)
return encoded`

const decode = Schema.decodeUnknown(Schema.parseJson(PollDefinition))
const decodeOption = Schema.decodeUnknownOption(Schema.parseJson(PollDefinition))

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
  const runFork = Runtime.runFork(yield* Effect.runtime<never>())
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
  const parse = (pollId: PollId, text: string) =>
    decode(text).pipe(Effect.orDieWith((e) => new Error(`stored definition of poll ${pollId} is malformed: ${e}`)))

  // Which polls are defined: loaded at start, told of new ones over pub/sub, and re-read every `resyncMs` in case
  // a message was missed while a node was away. Every instance confirms each announcement (an ack on the same node),
  // and `create` answers only when all the instances the announcement reached have confirmed: after a 201, no
  // instance takes the poll for an ad-hoc one. (An instance cut off from the node does not confirm; `create` gives
  // up waiting after ACK_WAIT_MS, and that instance learns of the poll when it resyncs.)
  const defined = new Set<string>()
  const acks = new Map<string, () => void>()
  const changeListeners: Array<(pollId: PollId) => void> = []
  const resync = Effect.forEach(
    clients.values(),
    ({ client, call }) =>
      call("list polls", () => client.smembers(INDEX_KEY)).pipe(
        Effect.tap((ids) => ids.forEach((id) => defined.add(id))),
        Effect.ignore
      ),
    { discard: true }
  )
  for (const node of nodes) {
    const subscriber = yield* RedisClient.acquire(node, { subscriber: true })
    const { client, call } = clients.get(node.name)!
    subscriber.on("message", (channel: string, pollId: string) => {
      if (channel === ACK_CHANNEL) return acks.get(pollId)?.()
      if (channel === CREATED_CHANNEL) {
        defined.add(pollId)
        runFork(Effect.ignore(call("confirm poll", () => client.publish(ACK_CHANNEL, pollId))))
      }
      for (const listener of changeListeners) listener(pollId as PollId)
    })
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

  // Ids whose definition went missing, each logged once; bounded by the definitions this instance has seen.
  const lost = new Set<string>()
  /**
   * The node has no definition of the poll: it was never defined, or (a poll this instance saw defined, which cannot
   * turn ad hoc) its node lost its data, and with it the poll's rules.
   */
  const missing = (pollId: PollId): Effect.Effect<Option.Option<PollDefinition>, DefinitionLost> => {
    if (!defined.has(pollId)) return Effect.succeedNone
    if (lost.has(pollId)) return new DefinitionLost({ pollId })
    lost.add(pollId)
    return Effect.zipRight(
      Effect.logError(`poll ${pollId} was defined, but node ${Ring.nodeFor(ring, pollId)} has no definition of it`),
      new DefinitionLost({ pollId })
    )
  }
  const read = (pollId: PollId) => {
    const { client, call } = nodeFor(pollId)
    return call("read poll", () => client.get(definitionKey(pollId))).pipe(
      Effect.flatMap((text) => (text === null ? missing(pollId) : Effect.asSome(parse(pollId, text))))
    )
  }

  /**
   * A node's created index, with each entry's definition. An entry is stale (no poll) when the definition is gone
   * (the node lost it; a poll defined again has a new entry), is not the one it was made for (another `created_at`),
   * or belongs to another node by the ring (left behind where a poll moved from).
   */
  const source =
    ({ name, client, call }: NodeClient): ListSource<StoreUnavailable> =>
    (before, count) =>
      call("list polls", () =>
        client.zrange(CREATED_KEY, before === undefined ? "+" : `(${before}`, "-", "BYLEX", "REV", "LIMIT", 0, count)
      ).pipe(
        Effect.flatMap((keys) =>
          keys.length === 0
            ? Effect.succeed([])
            : Effect.map(
                call("read polls", () => client.mget(keys.map((key) => definitionKey(positionOfKey(key).id)))),
                (texts) =>
                  keys.map((key, i): ListEntry => {
                    const id = positionOfKey(key).id
                    const text = texts[i]
                    const poll = text === null || text === undefined ? Option.none() : decodeOption(text)
                    const current =
                      Option.isSome(poll) &&
                      poll.value.id === id &&
                      positionKey(positionOf(poll.value)) === key &&
                      Ring.nodeFor(ring, id) === name
                    return { key, poll: current ? poll.value : undefined }
                  })
              )
        )
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
    create: (poll, keyHash) => {
      const { client, call } = nodeFor(poll.id)
      const create = (client as unknown as { livepollCreate: (...a: Array<string>) => Promise<number> }).livepollCreate
      let confirmed = 0
      let expected = Infinity
      let wake: (() => void) | undefined
      acks.set(poll.id, () => {
        if (++confirmed >= expected) wake?.()
      })
      const allConfirmed = Effect.async<void>((resume) => {
        if (confirmed >= expected) return resume(Effect.void)
        const timer = setTimeout(() => resume(Effect.void), ACK_WAIT_MS)
        wake = () => {
          clearTimeout(timer)
          resume(Effect.void)
        }
      })
      return call("create poll", () =>
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
      ).pipe(
        Effect.flatMap((result): Effect.Effect<PollDefinition, PollExists | TooManyPolls> => {
          if (result === 0) return new PollExists({ pollId: poll.id })
          if (result === -1) return new TooManyPolls({ limit: maxPolls })
          defined.add(poll.id)
          lost.delete(poll.id)
          // The script's answer is 1 + the number of connections the announcement reached: one per instance.
          expected = result - 1
          return Effect.as(allConfirmed, poll)
        }),
        Effect.ensuring(Effect.sync(() => acks.delete(poll.id)))
      )
    },
    get: (pollId) => (defined.has(pollId) ? read(pollId) : Effect.succeedNone),
    getExact: read,
    list: (query) => collectPage(sources, query),
    mayBeDefined: (pollId) => defined.has(pollId),
    onChanged: (listener) => void changeListeners.push(listener),
    close: (pollId, key) => {
      const { client, call } = nodeFor(pollId)
      return call("read organiser key", () => client.get(organiserKey(pollId))).pipe(
        Effect.flatMap((hash): Effect.Effect<void, CloseError> =>
          hash === null
            ? // No hash: no such poll, or one defined before polls had keys (which nobody can close but an operator).
              Effect.flatMap(read(pollId), (poll): Effect.Effect<void, CloseError> =>
                Option.isNone(poll) ? new PollNotFound({ pollId }) : checkOrganiserKey(pollId, undefined, key)
              )
            : checkOrganiserKey(pollId, hash, key)
        ),
        Effect.zipRight(
          call("close poll", () =>
            (client as unknown as { livepollClose: (key: string) => Promise<string | null> }).livepollClose(
              definitionKey(pollId)
            )
          )
        ),
        Effect.flatMap((text): Effect.Effect<PollDefinition, CloseError> =>
          text !== null ? parse(pollId, text) : Effect.zipRight(missing(pollId), new PollNotFound({ pollId }))
        )
      )
    }
  }
  return shape
})

export const layer = (
  nodes: ReadonlyArray<RedisClient.RedisNode>,
  maxPolls: number,
  options: PollsRedisOptions = {}
): Layer.Layer<Polls> => Layer.scoped(Polls, make(nodes, maxPolls, options))
