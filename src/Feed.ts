import { Context, Effect, Layer } from "effect"
import type { PollId } from "./Domain.js"

/**
 * "This poll's results may have changed": the signal live result streams wait for. Within one instance it is a
 * direct call (`layerLocal`); across instances it travels over Redis pub/sub on the poll's own node (`Feed/Redis.ts`).
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

/** The listeners of this instance, by poll: every backend signals its own streams through it. */
export const makeLocal = () => {
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
  /** Wakes the poll's streams here; a vote on a poll no stream of this instance watches has nothing to run. */
  const signal = (pollId: PollId): Effect.Effect<void> =>
    listeners.has(pollId) ? Effect.sync(() => notify(pollId)) : Effect.void
  return { notify, notifyAll, subscribe, signal }
}

export const layerLocal: Layer.Layer<Feed> = Layer.sync(Feed, () => {
  const local = makeLocal()
  return { changed: local.signal, local: local.signal, subscribe: local.subscribe }
})
