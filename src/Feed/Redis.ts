import { Duration, Effect, Layer, Runtime } from "effect"
import type { PollId } from "../Domain.js"
import { Feed, makeLocal } from "../Feed.js"
import * as RedisClient from "../RedisClient.js"
import * as Ring from "../Ring.js"

export const CHANNEL = "livepoll:changed"
/**
 * Signals to other instances go out together: one PUBLISH per node per interval, listing the polls that changed, so
 * the cost does not grow with the vote rate. Past `MAX_IDS_PER_SIGNAL` polls it says "*" (re-read every watched poll).
 */
export const SIGNAL_INTERVAL_MS = 100
const MAX_IDS_PER_SIGNAL = 1000
/** How long the start waits for a node to confirm the subscription (a node that is down does not confirm). */
const SUBSCRIBE_WAIT_MS = 1000

/** Publishes each poll's signal on the node the ring gives the poll, and listens on every node. */
export const layer = (nodes: ReadonlyArray<RedisClient.RedisNode>): Layer.Layer<Feed> =>
  Layer.scoped(
    Feed,
    Effect.gen(function* () {
      const local = makeLocal()
      const ring = Ring.make(nodes.map((n) => n.name))
      const runFork = Runtime.runFork(yield* Effect.runtime<never>())
      const pending = new Map<string, Set<PollId>>()
      const publish = new Map<string, (message: string) => void>()
      for (const node of nodes) {
        const client = yield* RedisClient.acquire(node)
        const subscriber = yield* RedisClient.acquire(node, { subscriber: true })
        subscriber.on("message", (_channel: string, message: string) =>
          message === "*" ? local.notifyAll() : message.split(" ").forEach((id) => local.notify(id as PollId))
        )
        // Subscribed before this instance serves, so no signal meant for its first streams is missed; a node that is
        // down does not hold up the start (ioredis subscribes again once it is back).
        yield* Effect.promise(() => subscriber.subscribe(CHANNEL).catch(() => 0)).pipe(
          Effect.timeout(Duration.millis(SUBSCRIBE_WAIT_MS)),
          Effect.ignore
        )
        const call = RedisClient.caller(node)
        publish.set(node.name, (message) =>
          runFork(Effect.ignore(call("publish", () => client.publish(CHANNEL, message))))
        )
        pending.set(node.name, new Set())
      }
      const timer = setInterval(() => {
        for (const [node, polls] of pending) {
          if (polls.size === 0) continue
          publish.get(node)!(polls.size > MAX_IDS_PER_SIGNAL ? "*" : [...polls].join(" "))
          polls.clear()
        }
      }, SIGNAL_INTERVAL_MS)
      yield* Effect.addFinalizer(() => Effect.sync(() => clearInterval(timer)))
      const changed = (pollId: PollId) =>
        Effect.sync(() => {
          local.notify(pollId)
          const polls = pending.get(Ring.nodeFor(ring, pollId))!
          // One past the limit is enough to send "*"; the set never grows further.
          if (polls.size <= MAX_IDS_PER_SIGNAL) polls.add(pollId)
        })
      return { changed, local: local.signal, subscribe: local.subscribe }
    })
  )
