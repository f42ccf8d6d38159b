import { type Clock, Effect } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"
import type { RateLimits } from "../Config.js"
import type { VoterId } from "../Domain.js"
import type { MetricsShape } from "../Metrics.js"
import { extraHeaders } from "./Reply.js"
import {
  type Limit,
  policyHeader,
  type RateLimited,
  type RateLimiterShape,
  rateLimitHeader,
  refusal
} from "../RateLimit.js"

/** What an address may look like: IPv4, IPv6 (a zone index is not kept). Anything else is not taken from a header. */
const ADDRESS = /^[0-9A-Fa-f:.]{2,45}$/

const normalize = (address: string) => (address.startsWith("::ffff:") ? address.slice(7) : address)

/**
 * The client's address. With `trustProxy` proxies in front, each appending the address it was reached from to
 * `X-Forwarded-For`, the client is the entry that many from the end: entries further left were written by the client
 * itself and prove nothing. Without (0), or when the entry is missing or not an address, the connection's own.
 */
export const clientAddress = (req: IncomingMessage, trustProxy: number): string => {
  const own = normalize(req.socket.remoteAddress ?? "unknown")
  if (trustProxy === 0) return own
  const header = req.headers["x-forwarded-for"]
  if (typeof header !== "string") return own
  const entries = header.split(",")
  const entry = entries[Math.max(0, entries.length - trustProxy)]!.trim()
  return ADDRESS.test(entry) ? normalize(entry) : own
}

/**
 * The limits of a request: its client address on every limited route, and its voter on a vote. A request within them
 * gets the `RateLimit` and `RateLimit-Policy` headers; one over them fails with `RateLimited` (a 429), having spent
 * nothing.
 */
export const make = (
  limiter: RateLimiterShape,
  limits: RateLimits,
  trustProxy: number,
  clock: Clock.Clock,
  metrics: MetricsShape
) => {
  const clientLimit = (req: IncomingMessage): Array<Limit> =>
    limits.client === 0
      ? []
      : [{ policy: "client", key: clientAddress(req, trustProxy), quota: limits.client, windowMs: limits.windowMs }]
  const check = (res: ServerResponse, list: Array<Limit>): Effect.Effect<void, RateLimited> => {
    if (list.length === 0) return Effect.void
    return Effect.flatMap(limiter.check(list, clock.unsafeCurrentTimeMillis()), (verdict) => {
      if (!verdict.allowed) {
        metrics.rateLimited(verdict.limit.policy)
        return Effect.fail(refusal(list, verdict))
      }
      const headers = extraHeaders(res)
      headers.ratelimit = rateLimitHeader(verdict)
      headers["ratelimit-policy"] = policyHeader(list)
      return Effect.void
    })
  }
  return {
    request: (req: IncomingMessage, res: ServerResponse) => check(res, clientLimit(req)),
    vote: (req: IncomingMessage, res: ServerResponse, voter: VoterId | undefined) => {
      const list = clientLimit(req)
      if (voter !== undefined && limits.voter > 0) {
        list.push({ policy: "voter", key: voter, quota: limits.voter, windowMs: limits.windowMs })
      }
      return check(res, list)
    }
  }
}

export type Guard = ReturnType<typeof make>
