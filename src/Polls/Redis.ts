import { Duration, Effect, Fiber, Layer, Runtime, Schedule, Schema } from "effect"
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
const CLOSED_CHANNEL = "livepoll:poll-closed"
/** How long `create` waits to hear its own announcement back (see `create`). */
const ECHO_WAIT_MS = 500
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
redis.call('PUBLISH', '${CLOSED_CHANNEL}', decoded.id)
return encoded`

const decode = Schema.decodeUnknown(Schema.parseJson(PollDefinition))

/** Definitions and voter sets on the node the ring gives each poll (one node for the single-Redis stages). */
export const make = Effect.fn("Polls.redis.make")(function* (nodes: ReadonlyArray<RedisClient.RedisNode>) {
  const ring = Ring.make(nodes.map((n) => n.name))
  const runFork = Runtime.runFork(yield* Effect.runtime<never>())
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
  // a message was missed while a node was away. `create` answers only once its own announcement has come back, by
  // when every instance's connection has been handed the same message.
  const defined = new Set<string>()
  const echoes = new Map<string, () => void>()
  let invalidate: (pollId: PollId) => Effect.Effect<void> = () => Effect.void
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
    subscriber.on("message", (channel: string, pollId: string) => {
      if (channel === CREATED_CHANNEL) {
        defined.add(pollId)
        echoes.get(pollId)?.()
      }
      runFork(invalidate(pollId as PollId))
    })
    subscriber.subscribe(CREATED_CHANNEL, CLOSED_CHANNEL).catch(() => {
      // ioredis subscribes again by itself once the node is back.
    })
  }

  const read = (pollId: PollId) => {
    const { client, call } = nodeFor(pollId)
    return call("read poll", () => client.get(definitionKey(pollId))).pipe(
      Effect.flatMap((text) => (text === null ? Effect.succeedNone : Effect.asSome(parse(pollId, text))))
    )
  }

  // A poll id this instance has not heard of is ad hoc, unless its announcement is already waiting in a socket:
  // `create` answers only after its own copy came back, and Redis hands every subscriber the message at the same
  // moment, so by the time a client can act on a 201 the message is readable here. Waiting for the rest of this
  // turn of the event loop (one setImmediate, shared by every vote in it) lets it be read before deciding.
  let waiting: Array<() => void> | undefined
  const afterReadyMessages = Effect.async<void>((resume) => {
    if (waiting === undefined) {
      const batch: Array<() => void> = (waiting = [])
      setImmediate(() => {
        waiting = undefined
        for (const wake of batch) wake()
      })
    }
    waiting.push(() => resume(Effect.void))
  })

  const shape: PollsShape = {
    create: (poll) => {
      const { client, call } = nodeFor(poll.id)
      const create = (client as unknown as { livepollCreate: (...a: Array<string>) => Promise<number> }).livepollCreate
      const echo = Effect.async<void>((resume) => {
        const done = () => {
          clearTimeout(timer)
          echoes.delete(poll.id)
          resume(Effect.void)
        }
        const timer = setTimeout(done, ECHO_WAIT_MS)
        echoes.set(poll.id, done)
      })
      return Effect.fork(echo).pipe(
        Effect.flatMap((heard) =>
          call("create poll", () =>
            create.call(client, definitionKey(poll.id), INDEX_KEY, JSON.stringify(poll), poll.id)
          ).pipe(
            Effect.flatMap((ok) => (ok === 0 ? new PollExists({ pollId: poll.id }) : Effect.succeed(poll))),
            Effect.tap(() => defined.add(poll.id)),
            Effect.zipLeft(Fiber.join(heard)),
            Effect.onError(() => Fiber.interrupt(heard))
          )
        )
      )
    },
    get: (pollId, fresh) => {
      if (!defined.has(pollId) && !fresh) {
        return Effect.flatMap(afterReadyMessages, () => (defined.has(pollId) ? read(pollId) : Effect.succeedNone))
      }
      return read(pollId)
    },
    mayBeDefined: (pollId) => defined.has(pollId),
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
  const cached = yield* withCache(shape)
  invalidate = cached.invalidate
  return cached
})

export const layer = (nodes: ReadonlyArray<RedisClient.RedisNode>): Layer.Layer<Polls> =>
  Layer.scoped(Polls, make(nodes))
