import { Context, Effect, Layer, Runtime } from "effect"
import type { PollId } from "./Domain.js"
import * as RedisClient from "./RedisClient.js"
import * as Ring from "./Ring.js"

/**
 * "This poll's results may have changed": the signal live result streams wait for. Within one instance it is a
 * direct call; across instances it travels over Redis pub/sub on the poll's own node.
 */
export interface FeedShape {
  /** The poll changed in the shared store: wakes this instance's streams and, shortly after, every other instance's. */
  readonly changed: (pollId: PollId) => Effect.Effect<void>
  /** The poll changed as this instance sees it (a vote it buffered): wakes this instance's streams only. */
  readonly local: (pollId: PollId) => Effect.Effect<void>
  /** Runs `onChange` at each signal for the poll until the returned effect unsubscribes. */
  readonly subscribe: (pollId: PollId, onChange: () => void) => Effect.Effect<Effect.Effect<void>>
}

export class Feed extends Context.Tag("livepoll/Feed")<Feed, FeedShape>() {}

export const CHANNEL = "livepoll:changed"
/**
 * Signals to other instances go out together: one PUBLISH per node per interval, listing the polls that changed, so
 * the cost does not grow with the vote rate. Past `MAX_IDS_PER_SIGNAL` polls it says "*" (re-read every watched poll).
 */
export const SIGNAL_INTERVAL_MS = 100
const MAX_IDS_PER_SIGNAL = 1000

const makeLocal = () => {
  const listeners = new Map<PollId, Set<() => void>>()
  const notify = (pollId: PollId) => listeners.get(pollId)?.forEach((listener) => listener())
  const notifyAll = () => listeners.forEach((set) => set.forEach((listener) => listener()))
  const subscribe = (pollId: PollId, onChange: () => void) =>
    Effect.sync(() => {
      let set = listeners.get(pollId)
      if (set === undefined) listeners.set(pollId, (set = new Set()))
      set.add(onChange)
      return Effect.sync(() => {
        set.delete(onChange)
        if (set.size === 0) listeners.delete(pollId)
      })
    })
  return { notify, notifyAll, subscribe }
}

export const layerLocal: Layer.Layer<Feed> = Layer.sync(Feed, () => {
  const local = makeLocal()
  const notify = (pollId: PollId) => Effect.sync(() => local.notify(pollId))
  return { changed: notify, local: notify, subscribe: local.subscribe }
})

/** Publishes each poll's signal on the node the ring gives the poll, and listens on every node. */
export const layerRedis = (nodes: ReadonlyArray<RedisClient.RedisNode>): Layer.Layer<Feed> =>
  Layer.scoped(
    Feed,
    Effect.gen(function* () {
      const local = makeLocal()
      const ring = Ring.make(nodes.map((n) => n.name))
      const runFork = Runtime.runFork(yield* Effect.runtime<never>())
      const pending = new Map<string, Set<PollId>>()
      const publish = new Map<string, (message: string) => void>()
      for (const node of nodes) {
        const client = yield* RedisClient.acquire(node, { autoPipelining: true })
        const subscriber = yield* RedisClient.acquire(node, { subscriber: true })
        subscriber.on("message", (_channel: string, message: string) =>
          message === "*" ? local.notifyAll() : message.split(" ").forEach((id) => local.notify(id as PollId))
        )
        subscriber.subscribe(CHANNEL).catch(() => {
          // ioredis subscribes again by itself once the node is back.
        })
        const call = RedisClient.caller(node.name)
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
      return { changed, local: (pollId: PollId) => Effect.sync(() => local.notify(pollId)), subscribe: local.subscribe }
    })
  )
