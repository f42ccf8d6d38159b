import { Cause, type Clock, Context, Effect, Either, Exit, Option, Runtime } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"
import type { Socket } from "node:net"
import { Feed, type FeedShape } from "../Feed.js"
import * as LiveResults from "../LiveResults.js"
import * as Metrics from "../Metrics.js"
import { Polls, type PollsShape } from "../Polls.js"
import type { RateLimiterShape } from "../RateLimit.js"
import type { RateLimits } from "../Config.js"
import { VoteStore, type VoteStoreShape } from "../VoteStore.js"
import * as Voting from "../Voting.js"
import { MAX_BODY_BYTES, readBody, TOO_LARGE } from "./Body.js"
import { parsePollId } from "./Decode.js"
import * as Docs from "./Docs.js"
import { InternalError, TooManyStreams } from "./Errors.js"
import * as Export from "./Export.js"
import * as Health from "./Health.js"
import * as PollsHttp from "./Polls.js"
import { EXTRA_HEADERS, fromError, type Reply, send as write, textReply, type WithExtraHeaders } from "./Reply.js"
import { type Route, route, UNLIMITED } from "./Routes.js"
import * as RateLimitsHttp from "./RateLimits.js"
import * as RequestLog from "./RequestLog.js"
import { runFast } from "./Run.js"
import * as Votes from "./Votes.js"

export type Services = VoteStore | Polls | Feed

/** The handlers, over the services they use (looked up once, not per request). */
export const makeApi = (services: {
  readonly store: VoteStoreShape
  readonly polls: PollsShape
  readonly feed: FeedShape
  readonly clock: Clock.Clock
  readonly metrics?: Metrics.MetricsShape
}) => {
  const { store, polls, feed, clock } = services
  const voting = Voting.make(polls, store, clock)
  return {
    ...Votes.make(voting, feed, services.metrics ?? Metrics.of(Context.empty())),
    ...PollsHttp.make(polls, feed),
    ...Export.make(voting),
    health: Health.make(store)
  }
}

const TOO_MANY_STREAMS = fromError(new TooManyStreams())
const INTERNAL_ERROR = fromError(new InternalError())

/** A response's route and the moment it was routed, kept on it until its answer is counted (see `observe`). */
const ROUTE = Symbol("livepoll.route")
const STARTED = Symbol("livepoll.started")
interface Timed extends ServerResponse {
  [ROUTE]: string
  [STARTED]: number | undefined
}

export interface HandlerOptions {
  readonly maxStreams: number
  /** A poll's stream re-reads its results at most this often (`STREAM_UPDATE_INTERVAL_MS`). */
  readonly streamUpdateIntervalMs?: number | undefined
  /** Every stream gets a keep-alive comment this often (`STREAM_HEARTBEAT_MS`). */
  readonly streamHeartbeatMs?: number | undefined
  /** Connections the listener has answered itself (see Listener): requests parsed on them get no second answer. */
  readonly answered: WeakSet<Socket>
  /** Per-client limits and the limiter that keeps count (`RATE_LIMIT_*`); none when off. */
  readonly rateLimits?: { readonly limits: RateLimits; readonly limiter: RateLimiterShape } | undefined
  /** Proxies in front that append to `X-Forwarded-For` (`TRUST_PROXY`). */
  readonly trustProxy?: number | undefined
  /** The share of hot-path requests that get an access log line (`ACCESS_LOG_SAMPLE`). */
  readonly accessLogSample?: number | undefined
}

/** Routes whose every request is logged: rare, and each one changes or hands out a poll. */
const ALWAYS_LOGGED = new Set(["CreatePoll", "ClosePoll", "ListPolls", "ExportCsv", "ExportJson"])

/**
 * The request handler: each request routed (see Routes) and its work run as an Effect on the application's runtime.
 * (See the README's "HTTP layer" for why this is not @effect/platform's HttpServer, with the measurements.)
 */
export const makeHandler = (runtime: Runtime.Runtime<Services>, options: HandlerOptions) => {
  const runFork = Runtime.runFork(runtime)
  const metrics = Metrics.of(runtime.context)
  const clock = Runtime.runSync(runtime)(Effect.clock)
  const api = makeApi({
    store: Context.get(runtime.context, VoteStore),
    polls: Context.get(runtime.context, Polls),
    feed: Context.get(runtime.context, Feed),
    clock,
    metrics
  })
  // Every answer is counted once, by route and status, with the time since the request was routed: at `send`, or
  // where an answer is written directly (a page, a stream's first bytes). Two fields on the response, no allocation.
  const timed = (res: ServerResponse, route: string) => {
    ;(res as Timed)[ROUTE] = route
    ;(res as Timed)[STARTED] = performance.now()
  }
  const observe = (res: ServerResponse, status: number) => {
    const started = (res as Timed)[STARTED]
    if (started === undefined) return
    ;(res as Timed)[STARTED] = undefined
    metrics.requestObserved((res as Timed)[ROUTE], status, (performance.now() - started) / 1000)
  }
  const send = (res: ServerResponse, r: Reply) => {
    write(res, r)
    observe(res, r.status)
  }
  const scrape = Effect.map(
    Effect.promise(() => metrics.scrape()),
    ({ contentType, body }) => textReply(200, contentType, body)
  )
  // Streams carry the results only: where they were read from changes from read to read and is not news.
  const hub = LiveResults.makeHub(
    runtime,
    (pollId) => Effect.map(api.tallyExact(pollId), ({ served_via: _, ...rest }) => rest),
    {
      maxStreams: options.maxStreams,
      updateIntervalMs: options.streamUpdateIntervalMs,
      heartbeatMs: options.streamHeartbeatMs
    }
  )
  const trustProxy = options.trustProxy ?? 0
  const sample = options.accessLogSample ?? 0
  const limits =
    options.rateLimits === undefined
      ? undefined
      : RateLimitsHttp.make(options.rateLimits.limiter, options.rateLimits.limits, trustProxy, clock, metrics)
  const failed = (res: ServerResponse, cause: unknown) => {
    runFork(
      Effect.logError("request failed unexpectedly", Cause.isCause(cause) ? cause : Cause.die(cause)).pipe(
        Effect.annotateLogs("request_id", (res as WithExtraHeaders)[EXTRA_HEADERS]?.["x-request-id"] ?? "")
      )
    )
    if (res.headersSent) res.destroy()
    else send(res, INTERNAL_ERROR)
  }
  // Each callback of a request (node:http's, the body reader's, the fiber's observer) catches what it throws: a bug
  // answers 503, never ends the process. Written out in each, so the per-request path allocates nothing for it.
  // Without a fiber while the request's steps are synchronous (see Run.ts); a fiber on the runtime for the rest.
  const run = (res: ServerResponse, effect: Effect.Effect<Reply>) =>
    runFast(effect, runFork, (exit) => {
      try {
        if (Exit.isSuccess(exit)) send(res, exit.value)
        else failed(res, exit.cause)
      } catch (error) {
        failed(res, error)
      }
    })
  const withBody = (req: IncomingMessage, res: ServerResponse, use: (text: string) => Effect.Effect<Reply>) =>
    readBody(req, MAX_BODY_BYTES, (text) => {
      try {
        if (text === undefined) send(res, TOO_LARGE)
        else run(res, use(text))
      } catch (error) {
        failed(res, error)
      }
    })

  // An answer written by other code than `send` (the page, a stream) gets the extra headers set beforehand: the slower
  // path, on requests that are not the hot ones.
  const keepExtraHeaders = (res: ServerResponse) => {
    for (const [name, value] of Object.entries((res as WithExtraHeaders)[EXTRA_HEADERS] ?? {}))
      res.setHeader(name, value)
  }

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    if (options.answered.has(req.socket)) return
    try {
      const requestId = RequestLog.requestIdOf(req)
      ;(res as WithExtraHeaders)[EXTRA_HEADERS] = { "x-request-id": requestId }
      const r = route(req.method ?? "GET", req.url ?? "/", req.headers.accept)
      timed(res, r._tag === "Reject" ? "unmatched" : r._tag)
      if (ALWAYS_LOGGED.has(r._tag) || (sample > 0 && Math.random() < sample)) {
        RequestLog.logWhenDone(
          req,
          res,
          { route: r._tag, requestId, client: RateLimitsHttp.clientAddress(req, trustProxy) },
          runFork
        )
      }
      if (limits === undefined || UNLIMITED.has(r._tag) || r._tag === "Vote") dispatch(req, res, r)
      else runLimited(req, res, r)
    } catch (error) {
      failed(res, error)
    }
  }

  // A limited request other than a vote: its client's limit is checked first, and the route runs only within it.
  const runLimited = (req: IncomingMessage, res: ServerResponse, r: Route) =>
    runFast(limits!.request(req, res), runFork, (exit) => {
      try {
        if (Exit.isSuccess(exit)) return dispatch(req, res, r)
        const refused = Cause.failureOption(exit.cause)
        if (Option.isSome(refused)) send(res, fromError(refused.value))
        else failed(res, exit.cause)
      } catch (error) {
        failed(res, error)
      }
    })

  const dispatch = (req: IncomingMessage, res: ServerResponse, r: Route) => {
    switch (r._tag) {
      case "Root":
        return send(res, Health.HEALTHY)
      case "Reject":
        return send(res, r.reply)
      case "Health":
        return run(res, api.health)
      case "Metrics":
        return run(res, scrape)
      case "Results":
        return run(res, api.results(r.pollId))
      case "Vote":
        return withBody(req, res, (text) =>
          api.vote(r.pollId, text, req, limits && ((voter) => limits.vote(req, res, voter)))
        )
      case "CreatePoll":
        return withBody(req, res, api.createPoll)
      case "GetPoll": {
        if (!r.page) return run(res, api.getPoll(r.pollId))
        const pollId = parsePollId(r.pollId)
        if (Either.isLeft(pollId)) return send(res, pollId.left)
        keepExtraHeaders(res)
        PollsHttp.sendPage(req, res, pollId.right)
        return observe(res, res.statusCode)
      }
      case "ClosePoll":
        return withBody(req, res, () => api.closePoll(r.pollId, req.headers.authorization))
      case "ListPolls":
        return run(res, api.listPolls(req.url ?? "/"))
      case "ExportCsv":
        return run(res, api.exportCsv(r.pollId))
      case "ExportJson":
        return run(res, api.exportJson(r.pollId))
      case "OpenApi":
        return run(res, Docs.openApi)
      case "Docs":
        return send(res, Docs.PAGE_REPLY)
      case "DocsScript":
        return send(res, Docs.script())
      case "DocsStyle":
        return send(res, Docs.style())
      case "Stream": {
        const pollId = parsePollId(r.pollId)
        if (Either.isLeft(pollId)) return send(res, pollId.left)
        if (req.method === "HEAD") {
          // What a GET would begin with, and nothing after: no stream is held for it.
          if (hub.full()) return send(res, TOO_MANY_STREAMS)
          res.writeHead(200, { ...LiveResults.STREAM_HEADERS, ...(res as WithExtraHeaders)[EXTRA_HEADERS] })
          res.end()
          return observe(res, 200)
        }
        keepExtraHeaders(res)
        if (hub.attach(pollId.right, res)) observe(res, 200)
        else send(res, TOO_MANY_STREAMS)
        return
      }
    }
  }
  return { handler, hub }
}
