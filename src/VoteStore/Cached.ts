import { Duration, Effect, Layer } from "effect"
import type { PollId } from "../Domain.js"
import { Metrics } from "../Metrics.js"
import * as TtlCache from "../TtlCache.js"
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
  const ttlMs = Duration.toMillis(options.ttl)
  const capacity = options.capacity ?? 100_000
  const lookups = (yield* Metrics).cache("results")
  // Invalidating an entry keeps a read already on its way from storing its answer, but the callers waiting on that
  // read still get it. So each snapshot remembers when its read began, and one that began before its poll's last
  // flush counts as a miss.
  let flushes = 0
  let floor = 0
  const flushedAt = new Map<PollId, number>()
  const current = (pollId: PollId, readAt: number) => readAt >= floor && readAt >= (flushedAt.get(pollId) ?? 0)
  const cache = yield* TtlCache.make({
    capacity,
    lookup: (pollId: PollId) => {
      const readAt = flushes
      return Effect.map(inner.results(pollId), (result) => ({ result, readAt }))
    },
    // A failed read is never cached: the next request tries the store again.
    ttlMs: () => ttlMs
  })
  /** The store's counts of these polls may have changed: snapshots read before now are stale. */
  const changed = (pollIds: Iterable<PollId>) => {
    flushes++
    for (const pollId of pollIds) {
      flushedAt.set(pollId, flushes)
      cache.invalidate(pollId)
    }
    // Bounded like the cache: past it, forget per-poll marks and treat every older snapshot as stale.
    if (flushedAt.size > capacity) {
      flushedAt.clear()
      floor = flushes
    }
  }
  const store: VoteStoreShape = {
    ...inner,
    results: (pollId) =>
      Effect.flatMap(cache.get(pollId), ({ value: { result, readAt }, hit }) => {
        if (!hit) {
          lookups.miss()
          return Effect.succeed(result)
        }
        if (current(pollId, readAt)) {
          lookups.hit()
          return Effect.succeed({ counts: result.counts, servedVia: APP_CACHE })
        }
        // A snapshot older than its poll's last flush: read again, as on a miss.
        lookups.miss()
        cache.invalidate(pollId)
        return inner.results(pollId)
      }),
    // A snapshot cannot say whether an unconfirmed batch is in it: an exact read goes to the store.
    exactResults: inner.exactResults,
    // A flushed batch changes what the store holds: drop the snapshots it touched, whether or not the call
    // reported success (a timed-out batch may have been applied).
    applyBatch: (batch) =>
      inner.applyBatch(batch).pipe(Effect.ensuring(Effect.sync(() => changed(batch.increments.keys())))),
    // A one-vote-per-voter vote skips any buffer above: it is in the store at once, and must show at once like a
    // buffered vote does, so it drops its poll's snapshot as a flush would.
    voteOnce: (pollId, optionId, voterId) =>
      // Whichever way it ends (a timed-out vote may have been counted); a match rather than `ensuring`, whose
      // interruption mask is a step only a fiber takes (Http/Run.ts), so the vote needs no fiber.
      Effect.matchCauseEffect(inner.voteOnce(pollId, optionId, voterId), {
        onFailure: (cause) => {
          changed([pollId])
          return Effect.failCause(cause)
        },
        onSuccess: () => {
          changed([pollId])
          return Effect.void
        }
      })
  }
  return store
})

export const layer = (options: CacheOptions): Layer.Layer<VoteStore, never, InnerStore> =>
  Layer.effect(
    VoteStore,
    Effect.flatMap(InnerStore, (inner) => make(inner, options))
  )
