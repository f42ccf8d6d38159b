import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { PollId } from "../src/Domain.js"
import * as Feed from "../src/Feed.js"
import * as FeedRedis from "../src/Feed/Redis.js"
import { type RedisServer, startRedis } from "./support/redis.js"
import { counter, type FeedBackend, feedContract, heardOver as heardOverStore } from "./support/feed.js"
import { eventually } from "./support/wait.js"

/**
 * The `Feed` contract over each backend's layer: this instance only, and Redis pub/sub over a real redis-server (read
 * when the layer is built, in its `describe`'s `beforeAll`, after the file's `beforeAll` below has started it). Pub/sub
 * is real I/O: a test that needs "nothing came" first sends a signal of its own and waits until it is heard, so that
 * whatever was sent before it has arrived too.
 */

let server: RedisServer

beforeAll(async () => {
  server = await startRedis()
})

afterAll(async () => {
  await server?.stop()
})

const redisLayer = () =>
  Layer.unwrapEffect(Effect.sync(() => FeedRedis.layer([{ url: server.url, name: "feed_redis" }])))

let unique = 0
const pollId = (name: string) => PollId.make(`${name}-${process.pid}-${unique++}`)

/** Until any signal `sender` sent before has reached `receiver` over the shared store. */
const heardOver = (sender: Feed.FeedShape, receiver: Feed.FeedShape) =>
  heardOverStore(sender, receiver, {
    newPoll: () => pollId("heard"),
    intervalMs: FeedRedis.SIGNAL_INTERVAL_MS / 2,
    what: "a signal heard over pub/sub"
  })

const backends: ReadonlyArray<{ readonly name: string; readonly layer: () => Layer.Layer<Feed.Feed> } & FeedBackend> = [
  {
    name: "local",
    layer: () => Feed.layerLocal,
    newPoll: pollId,
    neighbour: (_, name) => pollId(name),
    settle: () => Effect.void,
    echoes: false
  },
  {
    name: "redis",
    layer: redisLayer,
    newPoll: pollId,
    neighbour: (_, name) => pollId(name),
    settle: (feed) => heardOver(feed, feed),
    echoes: false
  }
]

for (const backend of backends)
  it.layer(backend.layer())(`Feed over ${backend.name}`, (it) => feedContract(it, backend))

describe("Feed over redis, two instances on one node", () => {
  const twoInstances = Effect.gen(function* () {
    const [a, b] = yield* Effect.all([Layer.build(redisLayer()), Layer.build(redisLayer())])
    const sender = Context.get(a, Feed.Feed)
    const receiver = Context.get(b, Feed.Feed)
    // Each instance subscribes as it starts, without waiting for the answer: wait until it has one.
    yield* heardOver(sender, receiver)
    return { sender, receiver }
  })

  it.scoped("changed on one wakes the poll's listeners on the other", () =>
    Effect.gen(function* () {
      const { receiver, sender } = yield* twoInstances
      const id = pollId("across")
      const heard = counter()
      yield* receiver.subscribe(id, heard.listener)
      yield* sender.changed(id)
      yield* Effect.promise(() =>
        eventually(async () => (heard.calls > 0 ? true : undefined), { what: "the other instance's listener" })
      )
    })
  )

  it.scoped("local on one wakes its own listeners only", () =>
    Effect.gen(function* () {
      const { receiver, sender } = yield* twoInstances
      const id = pollId("local-only")
      const [here, there] = [counter(), counter()]
      yield* sender.subscribe(id, here.listener)
      yield* receiver.subscribe(id, there.listener)
      yield* sender.local(id)
      yield* heardOver(sender, receiver)
      expect(here.calls).toBe(1)
      expect(there.calls).toBe(0)
    })
  )

  it.scoped("a listener unsubscribed on the other is not run", () =>
    Effect.gen(function* () {
      const { receiver, sender } = yield* twoInstances
      const id = pollId("unsubscribed")
      const [gone, kept] = [counter(), counter()]
      const unsubscribe = yield* receiver.subscribe(id, gone.listener)
      yield* receiver.subscribe(id, kept.listener)
      yield* unsubscribe
      yield* sender.changed(id)
      yield* heardOver(sender, receiver)
      expect(kept.calls).toBe(1)
      expect(gone.calls).toBe(0)
    })
  )
})
