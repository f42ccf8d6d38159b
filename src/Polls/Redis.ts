import { Duration, Effect, Layer, Schedule, Schema } from "effect"
import type { PollId, VoterId } from "../Domain.js"
import { PollDefinition, PollExists, PollNotFound } from "../Domain.js"
import type { PollsShape } from "../Polls.js"
import { Polls, withCache } from "../Polls.js"
import * as RedisClient from "../RedisClient.js"
import * as Ring from "../Ring.js"

/** Beside `poll:{id}:counts`: same hash tag, so the same node and the same Redis Cluster slot. */
export const definitionKey = (pollId: string) => `poll:{${pollId}}:definition`
export const votersKey = (pollId: string) => `poll:{${pollId}}:voters`
/** Per node: the ids of the polls defined there, so an instance knows without a round trip that a poll is ad hoc. */
export const INDEX_KEY = "livepoll:polls"
const CREATED_CHANNEL = "livepoll:poll-created"
const RESYNC_MS = 5000

const CREATE_SCRIPT = `
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return 0 end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PUBLISH', '${CREATED_CHANNEL}', ARGV[2])
return 1`

const CLOSE_SCRIPT = `
local poll = redis.call('GET', KEYS[1])
if not poll then return false end
local decoded = cjson.decode(poll)
decoded.closed = true
local encoded = cjson.encode(decoded)
redis.call('SET', KEYS[1], encoded)
return encoded`

const decode = Schema.decodeUnknown(Schema.parseJson(PollDefinition))

/** Definitions and voter sets on the node the ring gives each poll (one node for the single-Redis stages). */
export const make = Effect.fn("Polls.redis.make")(function* (nodes: ReadonlyArray<RedisClient.RedisNode>) {
  const ring = Ring.make(nodes.map((n) => n.name))
  const clients = new Map(
    yield* Effect.forEach(nodes, (node) =>
      // Voter checks sit on the vote path: commands of one tick share a round trip.
      Effect.map(RedisClient.acquire(node, { autoPipelining: true }), (client) => {
        client.defineCommand("livepollClose", { numberOfKeys: 1, lua: CLOSE_SCRIPT })
        client.defineCommand("livepollCreate", { numberOfKeys: 2, lua: CREATE_SCRIPT })
        return [node.name, { client, call: RedisClient.caller(node.name) }] as const
      })
    )
  )
  const nodeFor = (pollId: PollId) => clients.get(nodes.length === 1 ? nodes[0]!.name : Ring.nodeFor(ring, pollId))!
  const parse = (pollId: PollId, text: string) =>
    decode(text).pipe(Effect.orDieWith((e) => new Error(`stored definition of poll ${pollId} is malformed: ${e}`)))

  // Which polls are defined: loaded at start, told of new ones over pub/sub, and re-read every few seconds in case
  // a message was missed while a node was away. A vote on a poll defined a moment ago elsewhere may be taken as
  // ad hoc until the message arrives (milliseconds).
  const defined = new Set<string>()
  const resync = Effect.forEach(
    clients.values(),
    ({ client, call }) =>
      call("list polls", () => client.smembers(INDEX_KEY)).pipe(
        Effect.tap((ids) => ids.forEach((id) => defined.add(id))),
        Effect.ignore
      ),
    { discard: true }
  )
  yield* resync
  yield* resync.pipe(Effect.schedule(Schedule.spaced(Duration.millis(RESYNC_MS))), Effect.forkScoped)
  for (const node of nodes) {
    const subscriber = yield* RedisClient.acquire(node, { subscriber: true })
    subscriber.on("message", (_channel: string, pollId: string) => defined.add(pollId))
    subscriber.subscribe(CREATED_CHANNEL).catch(() => {
      // ioredis subscribes again by itself once the node is back.
    })
  }

  const shape: PollsShape = {
    create: (poll) => {
      const { client, call } = nodeFor(poll.id)
      const create = (client as unknown as { livepollCreate: (...a: Array<string>) => Promise<number> }).livepollCreate
      return call("create poll", () =>
        create.call(client, definitionKey(poll.id), INDEX_KEY, JSON.stringify(poll), poll.id)
      ).pipe(
        Effect.flatMap((ok) => (ok === 0 ? new PollExists({ pollId: poll.id }) : Effect.succeed(poll))),
        Effect.tap(() => defined.add(poll.id))
      )
    },
    get: (pollId) => {
      if (!defined.has(pollId)) return Effect.succeedNone
      const { client, call } = nodeFor(pollId)
      return call("read poll", () => client.get(definitionKey(pollId))).pipe(
        Effect.flatMap((text) => (text === null ? Effect.succeedNone : Effect.asSome(parse(pollId, text))))
      )
    },
    close: (pollId) => {
      const { client, call } = nodeFor(pollId)
      return call("close poll", () =>
        (client as unknown as { livepollClose: (key: string) => Promise<string | null> }).livepollClose(
          definitionKey(pollId)
        )
      ).pipe(Effect.flatMap((text) => (text === null ? new PollNotFound({ pollId }) : parse(pollId, text))))
    },
    claimVoter: (pollId: PollId, voterId: VoterId) => {
      const { client, call } = nodeFor(pollId)
      return Effect.map(
        call("record voter", () => client.sadd(votersKey(pollId), voterId)),
        (added) => added === 1
      )
    },
    releaseVoter: (pollId: PollId, voterId: VoterId) => {
      const { client, call } = nodeFor(pollId)
      return Effect.asVoid(call("release voter", () => client.srem(votersKey(pollId), voterId)))
    }
  }
  return yield* withCache(shape)
})

export const layer = (nodes: ReadonlyArray<RedisClient.RedisNode>): Layer.Layer<Polls> =>
  Layer.scoped(Polls, make(nodes))
