import { Effect, Layer, Runtime } from "effect"
import type { Cluster, Redis } from "ioredis"
import {
  intervalUs,
  type Limit,
  RateLimiter,
  type RateLimiterShape,
  step,
  type Verdict,
  verdictOf
} from "../RateLimit.js"
import * as RedisClient from "../RedisClient.js"
import * as ClusterClient from "../RedisClient/Cluster.js"
import * as Ring from "../Ring.js"

/**
 * Every limiter key of every instance lives on one node (the ring's owner of the name below), under one hash tag, so
 * a request's limits are one script on one node: one round trip.
 */
const HOME = "livepoll:ratelimit"
export const limitKey = (l: Pick<Limit, "policy" | "key">) => `ratelimit:{livepoll}:${l.policy}:${l.key}`

/** A failing limiter store is logged at most this often (each request it lets through would be a line). */
const WARN_EVERY_MS = 10_000
/** Requests checked by one script call at most; more in one turn of the event loop go in several. */
const MAX_PER_CALL = 500

// The checks of one turn of the event loop, in one call. KEYS: every key of every request, in order. ARGV: per
// request its number of keys and its time (µs), then per key its interval and window (µs). Returns per key the arrival
// time its step starts from (the stored one, or now), as text (Lua would round a number this large); the caller runs
// the same step on it (RateLimit.step). A request's keys are written only when all of them allow it, and the requests
// are taken in order, so each sees the ones before it as if it had been sent alone.
const CHECK_SCRIPT = `
local out, k, a = {}, 1, 1
while a <= #ARGV do
  local n, now = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local nexts, all = {}, true
  for i = 0, n - 1 do
    local tat = tonumber(redis.call('GET', KEYS[k + i]))
    local base = now
    if tat ~= nil and tat > now then base = tat end
    nexts[i] = base + tonumber(ARGV[a + 2 * i])
    if nexts[i] - now > tonumber(ARGV[a + 2 * i + 1]) then all = false end
    out[#out + 1] = string.format('%.0f', base)
  end
  if all then
    for i = 0, n - 1 do
      redis.call('SET', KEYS[k + i], string.format('%.0f', nexts[i]), 'PX', math.ceil((nexts[i] - now) / 1000))
    end
  end
  k, a = k + n, a + 2 * n
end
return out`

/** A standalone node's client or a Redis Cluster's: every key is under one hash tag, so one slot either way. */
interface LimiterRedis {
  livepollRateLimit(numKeys: number, ...args: Array<string | number>): Promise<Array<string>>
}

interface Pending {
  readonly limits: ReadonlyArray<Limit>
  readonly nowUs: number
  readonly resume: (verdict: Effect.Effect<Verdict>) => void
}

/**
 * The checks of one turn of the event loop go to Redis as one script call: a call per request would cost the vote
 * path more than the vote (see the README's "Rate limits"), and the answers are the same as one call each.
 */
const fromClient = Effect.fnUntraced(function* (
  redis: Redis | Cluster,
  target: Pick<RedisClient.RedisNode, "name" | "commandTimeoutMs">
) {
  const runFork = Runtime.runFork(yield* Effect.runtime<never>())
  redis.defineCommand("livepollRateLimit", { lua: CHECK_SCRIPT })
  const client = redis as unknown as LimiterRedis
  const call = RedisClient.caller(target)
  let warnedAt = -Infinity
  let queue: Array<Pending> = []

  const letThrough = (p: Pending, error: { readonly message: string }) => {
    const nowMs = p.nowUs / 1000
    if (nowMs - warnedAt >= WARN_EVERY_MS) {
      warnedAt = nowMs
      runFork(Effect.logWarning(`rate limits not enforced: ${error.message}`))
    }
    p.resume(
      Effect.succeed(
        verdictOf(
          p.limits,
          p.limits.map((l) => ({ ...step(l, undefined, p.nowUs), allowed: true }))
        )
      )
    )
  }

  const send = (part: ReadonlyArray<Pending>) => {
    const keys: Array<string> = []
    const args: Array<number> = []
    for (const p of part) {
      args.push(p.limits.length, p.nowUs)
      for (const l of p.limits) {
        keys.push(limitKey(l))
        args.push(intervalUs(l), l.windowMs * 1000)
      }
    }
    runFork(
      Effect.match(
        call("rate limit", () => client.livepollRateLimit(keys.length, ...keys, ...args)),
        {
          onSuccess: (bases) => {
            let k = 0
            for (const p of part) {
              const steps = p.limits.map((l) => step(l, Number(bases[k++]), p.nowUs))
              p.resume(Effect.succeed(verdictOf(p.limits, steps)))
            }
          },
          onFailure: (error) => part.forEach((p) => letThrough(p, error))
        }
      )
    )
  }

  const flush = () => {
    const all = queue
    queue = []
    for (let i = 0; i < all.length; i += MAX_PER_CALL) send(all.slice(i, i + MAX_PER_CALL))
  }

  const check: RateLimiterShape["check"] = (limits, nowMs) =>
    // No canceller: an interrupted request's answer is just not used (and without one, Http/Run.ts needs no fiber).
    Effect.async<Verdict>((resume) => {
      if (queue.push({ limits, nowUs: nowMs * 1000, resume }) === 1) setImmediate(flush)
    })
  return { check } satisfies RateLimiterShape
})

export const make = Effect.fn("RateLimiter.redis.make")(function* (nodes: ReadonlyArray<RedisClient.RedisNode>) {
  const home = Ring.nodeFor(Ring.make(nodes.map((n) => n.name)), HOME)
  const node = nodes.find((n) => n.name === home)!
  return yield* fromClient(yield* RedisClient.acquire(node), node)
})

export const layer = (nodes: ReadonlyArray<RedisClient.RedisNode>): Layer.Layer<RateLimiter> =>
  Layer.scoped(RateLimiter, make(nodes))

/** On a Redis Cluster: the keys' one hash tag puts them all in one slot, on whichever master serves it. */
export const layerCluster = (options: ClusterClient.ClusterClientOptions): Layer.Layer<RateLimiter> =>
  Layer.scoped(
    RateLimiter,
    Effect.flatMap(ClusterClient.acquire(options, { role: "rate limits" }), (client) =>
      fromClient(client, {
        name: "redis_cluster",
        ...(options.commandTimeoutMs === undefined ? {} : { commandTimeoutMs: options.commandTimeoutMs })
      })
    )
  )
