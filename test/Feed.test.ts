import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { PollId } from "../src/Domain.js"
import * as Feed from "../src/Feed.js"
import * as FeedRedis from "../src/Feed/Redis.js"
import { type RedisServer, startRedis } from "./support/redis.js"
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

/** A listener that counts its calls. */
const counter = () => {
  const count = { calls: 0, listener: () => void count.calls++ }
  return count
}

/**
 * Signals a poll of its own on `sender` until `receiver` hears it over the shared store (its own direct call on the
 * same instance does not count): then every signal `sender` sent before has reached `receiver` as well.
 */
const heardOver = (sender: Feed.FeedShape, receiver: Feed.FeedShape) =>
  Effect.gen(function* () {
    const id = pollId("heard")
    const heard = counter()
    const unsubscribe = yield* receiver.subscribe(id, heard.listener)
    let sent = 0
    yield* Effect.promise(() =>
      eventually(
        async () => {
          if (heard.calls > (sender === receiver ? sent : 0)) return true
          sent++
          Effect.runSync(sender.changed(id))
          return undefined
        },
        { what: "a signal heard over pub/sub", intervalMs: FeedRedis.SIGNAL_INTERVAL_MS / 2 }
      )
    )
    yield* unsubscribe
  })

const backends: ReadonlyArray<{
  readonly name: string
  readonly layer: () => Layer.Layer<Feed.Feed>
  /** Until any signal this instance sent has come back to it, if it does. */
  readonly settle: (feed: Feed.FeedShape) => Effect.Effect<void>
}> = [
  { name: "local", layer: () => Feed.layerLocal, settle: () => Effect.void },
  { name: "redis", layer: redisLayer, settle: (feed) => heardOver(feed, feed) }
]

for (const backend of backends) {
  it.layer(backend.layer())(`Feed over ${backend.name}`, (it) => {
    it.effect("changed runs the poll's listeners on this instance at once, and no other poll's", () =>
      Effect.gen(function* () {
        const feed = yield* Feed.Feed
        const [id, other] = [pollId("changed"), pollId("other")]
        const [first, second, elsewhere] = [counter(), counter(), counter()]
        yield* feed.subscribe(id, first.listener)
        yield* feed.subscribe(id, second.listener)
        yield* feed.subscribe(other, elsewhere.listener)
        yield* feed.changed(id)
        expect(first.calls).toBeGreaterThanOrEqual(1)
        expect(second.calls).toBeGreaterThanOrEqual(1)
        yield* backend.settle(feed)
        expect(elsewhere.calls).toBe(0)
      })
    )

    it.effect("local runs the poll's listeners on this instance at once, once", () =>
      Effect.gen(function* () {
        const feed = yield* Feed.Feed
        const id = pollId("local")
        const heard = counter()
        yield* feed.subscribe(id, heard.listener)
        yield* feed.local(id)
        expect(heard.calls).toBe(1)
        // Nothing comes back through the shared store later.
        yield* backend.settle(feed)
        expect(heard.calls).toBe(1)
      })
    )

    it.effect("unsubscribe stops that listener only", () =>
      Effect.gen(function* () {
        const feed = yield* Feed.Feed
        const id = pollId("unsubscribe")
        const [gone, kept] = [counter(), counter()]
        const unsubscribe = yield* feed.subscribe(id, gone.listener)
        yield* feed.subscribe(id, kept.listener)
        yield* unsubscribe
        yield* feed.changed(id)
        yield* feed.local(id)
        yield* backend.settle(feed)
        expect(gone.calls).toBe(0)
        expect(kept.calls).toBeGreaterThanOrEqual(2)
      })
    )
  })
}

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
