import { Deferred, Effect, Exit, FiberId } from "effect"

/**
 * A read-through cache for the request path: a hit is one map lookup and a clock read, where Effect's `Cache` does
 * more than a cached read can afford (see the README's "Performance").
 *
 * - Concurrent misses of one key share a single lookup; its callers see `hit: false`, the ones who waited `hit: true`.
 * - A value is kept for `ttlMs(value)` after its lookup completed; 0 means "do not keep". Failures are never kept.
 * - `invalidate` drops an entry, and a lookup already on its way for it will not store its (older) answer.
 * - At `capacity` the oldest entry goes. Entries are re-inserted at each refresh, so "oldest" is the least recently
 *   loaded: with short time-to-lives that is close to least recently used, at no cost per hit.
 */
export interface TtlCache<K, V, E> {
  readonly get: (key: K) => Effect.Effect<{ readonly value: V; readonly hit: boolean }, E>
  readonly invalidate: (key: K) => void
  readonly size: () => number
}

export interface TtlCacheOptions<K, V, E> {
  readonly lookup: (key: K) => Effect.Effect<V, E>
  readonly ttlMs: (value: V) => number
  readonly capacity: number
}

type Entry<V, E> =
  | { readonly _tag: "Loaded"; readonly value: V; readonly expiresAt: number }
  | { readonly _tag: "Loading"; readonly deferred: Deferred.Deferred<V, E> }

export const make = <K, V, E>(options: TtlCacheOptions<K, V, E>) =>
  Effect.map(Effect.clock, (clock): TtlCache<K, V, E> => {
    const entries = new Map<K, Entry<V, E>>()

    const store = (key: K, entry: Entry<V, E>) => {
      entries.set(key, entry)
      if (entries.size > options.capacity) entries.delete(entries.keys().next().value!)
    }

    const load = (key: K) => {
      const loading: Entry<V, E> = { _tag: "Loading", deferred: Deferred.unsafeMake<V, E>(FiberId.none) }
      store(key, loading)
      return options.lookup(key).pipe(
        Effect.onExit((exit) =>
          Effect.sync(() => {
            if (entries.get(key) === loading) {
              entries.delete(key)
              if (Exit.isSuccess(exit)) {
                const ttl = options.ttlMs(exit.value)
                if (ttl > 0)
                  store(key, { _tag: "Loaded", value: exit.value, expiresAt: clock.unsafeCurrentTimeMillis() + ttl })
              }
            }
            Deferred.unsafeDone(loading.deferred, exit)
          })
        ),
        Effect.map((value) => ({ value, hit: false }))
      )
    }

    return {
      get: (key) =>
        Effect.suspend(() => {
          const entry = entries.get(key)
          if (entry === undefined) return load(key)
          if (entry._tag === "Loading")
            return Effect.map(Deferred.await(entry.deferred), (value) => ({ value, hit: true }))
          if (entry.expiresAt > clock.unsafeCurrentTimeMillis())
            return Effect.succeed({ value: entry.value, hit: true })
          entries.delete(key)
          return load(key)
        }),
      invalidate: (key) => void entries.delete(key),
      size: () => entries.size
    }
  })
