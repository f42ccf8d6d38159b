import { Cache, Duration, Effect, Either, Exit, Layer } from "effect"
import type { PollId } from "../Domain.js"
import type { VoteStoreShape } from "../VoteStore.js"
import { InnerStore, VoteStore } from "../VoteStore.js"

export const APP_CACHE = "app_cache"

export interface CacheOptions {
  readonly ttl: Duration.DurationInput
  /** Polls kept at once; the least recently used goes first, so a flood of distinct polls cannot grow memory. */
  readonly capacity?: number
}

/**
 * Read-through cache of per-poll results. A snapshot is served for `ttl` after it was read, then re-read.
 * Votes and batches go straight through: the snapshot is allowed to lag by up to `ttl`, which is the trade.
 */
export const make = Effect.fn("VoteStore.cached.make")(function* (inner: VoteStoreShape, options: CacheOptions) {
  const ttl = Duration.decode(options.ttl)
  const cache = yield* Cache.makeWith({
    capacity: options.capacity ?? 100_000,
    lookup: (pollId: PollId) => inner.results(pollId),
    // A failed read is never cached: the next request tries the store again.
    timeToLive: (exit) => (Exit.isSuccess(exit) ? ttl : Duration.zero)
  })
  const store: VoteStoreShape = {
    ...inner,
    // A snapshot cannot say whether an unconfirmed batch is in it, so a read that asks (even about no batch: the
    // caller wants the store's own answer) goes to the store.
    results: (pollId, batchIds) =>
      batchIds !== undefined
        ? inner.results(pollId, batchIds)
        : cache.getEither(pollId).pipe(
            // Effect's cache keeps even a zero-lifetime entry until the clock moves on: drop a failure at once.
            Effect.tapError(() => cache.invalidate(pollId)),
            Effect.map(
              Either.match({
                onLeft: (hit) => ({ counts: hit.counts, servedVia: APP_CACHE }),
                onRight: (miss) => miss
              })
            )
          ),
    // A flushed batch changes what the store holds: drop the snapshots it touched, whether or not the call
    // reported success (a timed-out batch may have been applied).
    applyBatch: (batch) =>
      inner
        .applyBatch(batch)
        .pipe(Effect.ensuring(Effect.forEach(batch.increments.keys(), (pollId) => cache.invalidate(pollId))))
  }
  return store
})

export const layer = (options: CacheOptions): Layer.Layer<VoteStore, never, InnerStore> =>
  Layer.effect(
    VoteStore,
    Effect.flatMap(InnerStore, (inner) => make(inner, options))
  )
