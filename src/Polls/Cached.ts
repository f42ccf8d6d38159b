import { Duration, Effect, Layer, Option } from "effect"
import type { PollId } from "../Domain.js"
import { Metrics } from "../Metrics.js"
import type { PollsShape } from "../Polls.js"
import { asInner, InnerPolls, Polls } from "../Polls.js"
import * as TtlCache from "../TtlCache.js"

export interface CacheOptions {
  readonly ttl: Duration.DurationInput
  /** Definitions kept at once; the least recently used goes first. */
  readonly capacity: number
}

/**
 * Definitions are read on every vote of a defined poll, so they are cached briefly. Only definitions are cached,
 * never "no such poll" (a poll may be defined at any moment), and a poll this instance knows is not defined skips
 * the cache altogether. The instance that creates or closes a poll drops its copy at once; the others when the inner
 * definitions report the change (`onChanged`), or at the latest after `ttl`. A poll's `closes_at` is checked against
 * the clock on every vote, so a cached definition never keeps a poll open past it.
 */
export const make = (inner: PollsShape, options: CacheOptions) => {
  const ttlMs = Duration.toMillis(options.ttl)
  return Effect.map(
    Effect.zip(
      TtlCache.make({
        capacity: options.capacity,
        lookup: (pollId: PollId) => inner.get(pollId),
        ttlMs: (found) => (Option.isSome(found) ? ttlMs : 0)
      }),
      Metrics
    ),
    ([cache, metrics]): PollsShape => {
      const lookups = metrics.cache("definitions")
      const counted = <A>(found: { readonly value: A; readonly hit: boolean }) => {
        if (found.hit) lookups.hit()
        else lookups.miss()
        return found.value
      }
      const drop = (pollId: PollId) => Effect.sync(() => cache.invalidate(pollId))
      inner.onChanged((pollId) => cache.invalidate(pollId))
      return {
        ...inner,
        get: (pollId) => (inner.mayBeDefined(pollId) ? Effect.map(cache.get(pollId), counted) : inner.get(pollId)),
        // What the store holds now replaces whatever this instance had cached.
        getExact: (pollId) => Effect.zipLeft(inner.getExact(pollId), drop(pollId)),
        create: (poll, keyHash) => Effect.tap(inner.create(poll, keyHash), () => drop(poll.id)),
        close: (pollId, key) => Effect.tap(inner.close(pollId, key), () => drop(pollId))
      }
    }
  )
}

export const layer = (options: CacheOptions): Layer.Layer<Polls, never, InnerPolls> =>
  Layer.effect(
    Polls,
    Effect.flatMap(InnerPolls, (inner) => make(inner, options))
  )

/** The cache over a definitions layer. */
export const over = <E, R>(options: CacheOptions, polls: Layer.Layer<Polls, E, R>): Layer.Layer<Polls, E, R> =>
  layer(options).pipe(Layer.provide(asInner(polls)))
