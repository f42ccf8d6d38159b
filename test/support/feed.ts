import { expect, type Vitest } from "@effect/vitest"
import { Effect } from "effect"
import type { PollId } from "../../src/Domain.js"
import * as Feed from "../../src/Feed.js"
import { eventually } from "./wait.js"

/** A listener that counts its calls. */
export const counter = () => {
  const count = { calls: 0, listener: () => void count.calls++ }
  return count
}

/**
 * Signals the poll `newPoll()` gives on `sender` until `receiver` hears it over the shared store (its own direct call
 * on the same instance does not count): then every signal `sender` sent before on that channel has reached `receiver`.
 */
export const heardOver = (
  sender: Feed.FeedShape,
  receiver: Feed.FeedShape,
  options: {
    readonly newPoll: () => PollId
    readonly intervalMs: number
    readonly what: string
    readonly timeoutMs?: number
  }
) =>
  Effect.gen(function* () {
    const id = options.newPoll()
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
        { what: options.what, intervalMs: options.intervalMs, timeoutMs: options.timeoutMs ?? 5000 }
      )
    )
    yield* unsubscribe
  })

export interface FeedBackend {
  /** A poll id no other test has used. */
  readonly newPoll: (name: string) => PollId
  /** Another new poll whose signals share `id`'s channel, where the backend has channels. */
  readonly neighbour: (id: PollId, name: string) => PollId
  /** Until any signal this instance sent on `id`'s channel has come back to it, if it does. */
  readonly settle: (feed: Feed.FeedShape, id: PollId) => Effect.Effect<void>
  /** Whether `changed` also comes back to this instance over the shared store. */
  readonly echoes: boolean
}

/** The `Feed` contract, run inside a layer's describe (`it.layer(...)(name, (it) => feedContract(it, backend))`). */
export const feedContract = (it: Vitest.MethodsNonLive<Feed.Feed>, backend: FeedBackend) => {
  it.effect("changed runs the poll's listeners on this instance at once, and no other poll's", () =>
    Effect.gen(function* () {
      const feed = yield* Feed.Feed
      const id = backend.newPoll("changed")
      const other = backend.neighbour(id, "other")
      const [first, second, elsewhere] = [counter(), counter(), counter()]
      yield* feed.subscribe(id, first.listener)
      yield* feed.subscribe(id, second.listener)
      yield* feed.subscribe(other, elsewhere.listener)
      yield* feed.changed(id)
      expect(first.calls).toBeGreaterThanOrEqual(1)
      expect(second.calls).toBeGreaterThanOrEqual(1)
      yield* backend.settle(feed, id)
      // Once directly, and once more over the shared store where it comes back.
      expect(first.calls).toBeGreaterThanOrEqual(backend.echoes ? 2 : 1)
      expect(elsewhere.calls).toBe(0)
    })
  )

  it.effect("local runs the poll's listeners on this instance at once, once", () =>
    Effect.gen(function* () {
      const feed = yield* Feed.Feed
      const id = backend.newPoll("local")
      const heard = counter()
      yield* feed.subscribe(id, heard.listener)
      yield* feed.local(id)
      expect(heard.calls).toBe(1)
      // Nothing comes back through the shared store later.
      yield* backend.settle(feed, id)
      expect(heard.calls).toBe(1)
    })
  )

  it.effect("unsubscribe stops that listener only", () =>
    Effect.gen(function* () {
      const feed = yield* Feed.Feed
      const id = backend.newPoll("unsubscribe")
      const [gone, kept] = [counter(), counter()]
      const unsubscribe = yield* feed.subscribe(id, gone.listener)
      yield* feed.subscribe(id, kept.listener)
      yield* unsubscribe
      yield* feed.changed(id)
      yield* feed.local(id)
      yield* backend.settle(feed, id)
      expect(gone.calls).toBe(0)
      expect(kept.calls).toBeGreaterThanOrEqual(backend.echoes ? 3 : 2)
    })
  )
}
