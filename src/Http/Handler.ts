import { Cause, type Clock, Context, Effect, Either, Exit, Runtime } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"
import type { Socket } from "node:net"
import { Feed, type FeedShape } from "../Feed.js"
import * as LiveResults from "../LiveResults.js"
import { Polls, type PollsShape } from "../Polls.js"
import { VoteStore, type VoteStoreShape } from "../VoteStore.js"
import * as Voting from "../Voting.js"
import { MAX_BODY_BYTES, readBody, TOO_LARGE } from "./Body.js"
import { parsePollId } from "./Decode.js"
import { InternalError, TooManyStreams } from "./Errors.js"
import * as Health from "./Health.js"
import * as PollsHttp from "./Polls.js"
import { fromError, type Reply, send } from "./Reply.js"
import { route } from "./Routes.js"
import { runFast } from "./Run.js"
import * as Votes from "./Votes.js"

export type Services = VoteStore | Polls | Feed

/** The handlers, over the services they use (looked up once, not per request). */
export const makeApi = (services: {
  readonly store: VoteStoreShape
  readonly polls: PollsShape
  readonly feed: FeedShape
  readonly clock: Clock.Clock
}) => {
  const { store, polls, feed, clock } = services
  return {
    ...Votes.make(Voting.make(polls, store, clock), feed),
    ...PollsHttp.make(polls, feed),
    health: Health.make(store)
  }
}

const TOO_MANY_STREAMS = fromError(new TooManyStreams())
const INTERNAL_ERROR = fromError(new InternalError())

export interface HandlerOptions {
  readonly maxStreams: number
  /** A poll's stream re-reads its results at most this often (`STREAM_UPDATE_INTERVAL_MS`). */
  readonly streamUpdateIntervalMs?: number | undefined
  /** Every stream gets a keep-alive comment this often (`STREAM_HEARTBEAT_MS`). */
  readonly streamHeartbeatMs?: number | undefined
  /** Connections the listener has answered itself (see Listener): requests parsed on them get no second answer. */
  readonly answered: WeakSet<Socket>
}

/**
 * The request handler: each request routed (see Routes) and its work run as an Effect on the application's runtime.
 * (See the README's "HTTP layer" for why this is not @effect/platform's HttpServer, with the measurements.)
 */
export const makeHandler = (runtime: Runtime.Runtime<Services>, options: HandlerOptions) => {
  const runFork = Runtime.runFork(runtime)
  const api = makeApi({
    store: Context.get(runtime.context, VoteStore),
    polls: Context.get(runtime.context, Polls),
    feed: Context.get(runtime.context, Feed),
    clock: Runtime.runSync(runtime)(Effect.clock)
  })
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
  const failed = (res: ServerResponse, cause: unknown) => {
    runFork(Effect.logError("request failed unexpectedly", Cause.isCause(cause) ? cause : Cause.die(cause)))
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

  const handler = (req: IncomingMessage, res: ServerResponse) => {
    if (options.answered.has(req.socket)) return
    try {
      dispatch(req, res)
    } catch (error) {
      failed(res, error)
    }
  }

  const dispatch = (req: IncomingMessage, res: ServerResponse) => {
    const r = route(req.method ?? "GET", req.url ?? "/", req.headers.accept)
    switch (r._tag) {
      case "Root":
        return send(res, Health.HEALTHY)
      case "Reject":
        return send(res, r.reply)
      case "Health":
        return run(res, api.health)
      case "Results":
        return run(res, api.results(r.pollId))
      case "Vote":
        return withBody(req, res, (text) => api.vote(r.pollId, text, req))
      case "CreatePoll":
        return withBody(req, res, api.createPoll)
      case "GetPoll": {
        if (!r.page) return run(res, api.getPoll(r.pollId))
        const pollId = parsePollId(r.pollId)
        return Either.isLeft(pollId) ? send(res, pollId.left) : PollsHttp.sendPage(req, res, pollId.right)
      }
      case "ClosePoll":
        return withBody(req, res, () => api.closePoll(r.pollId, req.headers.authorization))
      case "Stream": {
        const pollId = parsePollId(r.pollId)
        if (Either.isLeft(pollId)) return send(res, pollId.left)
        if (req.method === "HEAD") {
          // What a GET would begin with, and nothing after: no stream is held for it.
          if (hub.full()) return send(res, TOO_MANY_STREAMS)
          res.writeHead(200, LiveResults.STREAM_HEADERS)
          return res.end()
        }
        if (!hub.attach(pollId.right, res)) send(res, TOO_MANY_STREAMS)
        return
      }
    }
  }
  return { handler, hub }
}
