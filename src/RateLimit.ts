import { Context, Effect, Layer, Schema } from "effect"

/**
 * Per-client limits: one quota per client address and one per voter id, each `quota` requests per `windowMs`, shared
 * by every instance through the store (see RateLimit/Redis.ts). The algorithm is GCRA (the generic cell rate
 * algorithm): a key holds one number, the time its quota is next fully spent ("theoretical arrival time"), so a client
 * may send its whole quota at once and then one request every `windowMs / quota`, and a key costs one value in the
 * store that expires once the client has been quiet for a window.
 */
export interface Limit {
  /** Which policy: named in the `RateLimit` headers and the metrics. */
  readonly policy: "client" | "voter"
  /** The client address or voter id; kept as the store's key, never as a metric label. */
  readonly key: string
  readonly quota: number
  readonly windowMs: number
}

/** What the tightest of a request's limits says. */
export interface Verdict {
  readonly allowed: boolean
  readonly limit: Limit
  /** Requests left within the window after this one. */
  readonly remaining: number
  /** Until the quota is whole again, in ms. */
  readonly resetMs: number
  /** When refused: until one request is allowed again, in ms (0 when allowed). */
  readonly retryAfterMs: number
}

export interface RateLimiterShape {
  /**
   * Counts one request against every limit, or against none: a request refused by one limit does not spend the
   * others. Never fails: a store that cannot be asked lets the request through (a limiter must not turn a Redis
   * outage into refused votes that the buffer could have taken), and says so in the logs.
   */
  readonly check: (limits: ReadonlyArray<Limit>, nowMs: number) => Effect.Effect<Verdict>
}

export class RateLimiter extends Context.Tag("livepoll/RateLimiter")<RateLimiter, RateLimiterShape>() {}

/** Times are whole microseconds, in the memory store and in the Redis script alike, so the two agree exactly. */
export const intervalUs = (l: Limit) => Math.ceil((l.windowMs * 1000) / l.quota)

/** One GCRA step of one key: `tat` is the stored arrival time (µs), undefined for a key not seen or expired. */
export const step = (l: Limit, tat: number | undefined, nowUs: number) => {
  const interval = intervalUs(l)
  const windowUs = l.windowMs * 1000
  const base = tat === undefined || tat < nowUs ? nowUs : tat
  const next = base + interval
  const allowed = next - nowUs <= windowUs
  return {
    allowed,
    tat: next,
    remaining: allowed ? Math.floor((windowUs - (next - nowUs)) / interval) : 0,
    resetMs: Math.ceil(((allowed ? next : base) - nowUs) / 1000),
    retryAfterMs: allowed ? 0 : Math.ceil((next - windowUs - nowUs) / 1000)
  }
}

export type Step = ReturnType<typeof step>

/** The verdict of a request's steps: the first refusal, else the limit with the fewest requests left. */
export const verdictOf = (limits: ReadonlyArray<Limit>, steps: ReadonlyArray<Omit<Step, "tat">>): Verdict => {
  let at = 0
  for (let i = 1; i < steps.length; i++) {
    const s = steps[i]!
    const best = steps[at]!
    if (best.allowed ? !s.allowed || s.remaining < best.remaining : !s.allowed && s.retryAfterMs > best.retryAfterMs) {
      at = i
    }
  }
  const s = steps[at]!
  return {
    allowed: s.allowed,
    limit: limits[at]!,
    remaining: s.remaining,
    resetMs: s.resetMs,
    retryAfterMs: s.retryAfterMs
  }
}

/**
 * In process, for one instance (the memory stage): keys in a Map, each dropped once its window has passed. At most
 * `maxKeys` are held; past that the longest-quiet key is forgotten (its client starts afresh), so a flood of distinct
 * addresses cannot grow the process without bound.
 */
export const makeMemory = (maxKeys: number): RateLimiterShape => {
  const tats = new Map<string, number>()
  return {
    check: (limits, nowMs) =>
      Effect.sync(() => {
        const nowUs = nowMs * 1000
        const steps = limits.map((l) => step(l, tats.get(`${l.policy}:${l.key}`), nowUs))
        if (steps.every((s) => s.allowed)) {
          limits.forEach((l, i) => {
            const id = `${l.policy}:${l.key}`
            // Re-inserted, so the Map's order is least recently used first.
            tats.delete(id)
            tats.set(id, steps[i]!.tat)
          })
          for (const [id, tat] of tats) {
            if (tats.size <= maxKeys && tat > nowUs) break
            tats.delete(id)
          }
        }
        return verdictOf(limits, steps)
      })
  }
}

/** Client addresses and voters the memory limiter remembers at most. */
export const MEMORY_MAX_KEYS = 100_000

export const layerMemory: Layer.Layer<RateLimiter> = Layer.sync(RateLimiter, () => makeMemory(MEMORY_MAX_KEYS))

/** A 429: the request was not served (a vote not counted); `Retry-After` says when to try again. */
export class RateLimited extends Schema.TaggedError<RateLimited>()("RateLimited", {
  policy: Schema.String,
  retryAfterSeconds: Schema.Number,
  rateLimit: Schema.String,
  rateLimitPolicy: Schema.String
}) {
  readonly status = 429
  readonly code = "rate_limited"
  override get message() {
    return `too many requests for this ${this.policy}; try again in ${this.retryAfterSeconds} s`
  }
  get headers() {
    return {
      "retry-after": String(this.retryAfterSeconds),
      ratelimit: this.rateLimit,
      "ratelimit-policy": this.rateLimitPolicy
    }
  }
}

/**
 * The IETF `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers): each policy with its
 * quota `q` and window `w` in seconds; the tightest one's remaining `r` and seconds to reset `t`.
 */
export const policyHeader = (limits: ReadonlyArray<Limit>) =>
  limits.map((l) => `"${l.policy}";q=${l.quota};w=${Math.ceil(l.windowMs / 1000)}`).join(", ")

export const rateLimitHeader = (v: Verdict) => `"${v.limit.policy}";r=${v.remaining};t=${Math.ceil(v.resetMs / 1000)}`

export const refusal = (limits: ReadonlyArray<Limit>, v: Verdict) =>
  new RateLimited({
    policy: v.limit.policy,
    // Whole seconds, rounded up: a client that waits as told is let in.
    retryAfterSeconds: Math.max(1, Math.ceil(v.retryAfterMs / 1000)),
    rateLimit: rateLimitHeader(v),
    rateLimitPolicy: policyHeader(limits)
  })
