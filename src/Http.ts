import { Cause, Clock, Context, Effect, Either, Exit, Layer, Option, ParseResult, Runtime, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { readFileSync } from "node:fs"
import { createServer, type IncomingMessage, maxHeaderSize, type ServerResponse, STATUS_CODES } from "node:http"
import type { Socket } from "node:net"
import { effectiveLimits, parseOpenFileLimit } from "./Config.js"
import type { PollDefinition, VoterId } from "./Domain.js"
import { isOpen, isPollId, isVoterId, PollDraft, PollId, VoteRequest, voteRequestOf } from "./Domain.js"
import { Feed, type FeedShape } from "./Feed.js"
import * as LiveResults from "./LiveResults.js"
import * as Page from "./Page.js"
import { define, organiserKey, Polls, type PollsShape } from "./Polls.js"
import { VoteStore, type VoteStoreShape } from "./VoteStore.js"
import * as Voting from "./Voting.js"

export const MAX_BODY_BYTES = 16 * 1024
/** How long an oversized body is read and thrown away before the 413, so the client is not cut off mid-send. */
const DISCARD_MS = 1000
/**
 * JSON bodies nest at most this deep. Deeper ones are refused before parsing, so nothing that walks a value
 * recursively (the schema's error formatter, JSON.stringify) ever meets one: a few thousand levels overflow the stack.
 */
export const MAX_JSON_DEPTH = 64
/** Messages that quote the request (a path, a schema's complaint) are cut to this many characters. */
const MAX_MESSAGE_CHARS = 300
/**
 * A connection answered by the listener itself (over the cap, a malformed request) is closed on our side at once but
 * read for up to this long, so the client's unread bytes do not turn our close into a reset that loses the answer.
 */
const LINGER_MS = 1000

type Services = VoteStore | Polls | Feed

/** What a request ends in: a status, a JSON body and any extra headers. */
export interface Reply {
  readonly status: number
  readonly body: unknown
  readonly headers?: Readonly<Record<string, string>>
}

const truncate = (text: string) =>
  text.length <= MAX_MESSAGE_CHARS ? text : `${text.slice(0, MAX_MESSAGE_CHARS - 1)}\u2026`

const reply = (status: number, body: unknown): Reply => ({ status, body })
// A message may quote the request (a path, a schema's complaint): never more than MAX_MESSAGE_CHARS of it.
const failure = (status: number, error: string, message: string): Reply =>
  reply(status, { error, message: truncate(message) })

/** Every typed failure carries its own status and error code (see Domain): this turns any of them into a reply. */
const fromError = (e: { readonly status: number; readonly code: string; readonly message: string }): Reply =>
  e.status === 401
    ? { ...failure(e.status, e.code, e.message), headers: { "www-authenticate": 'Bearer realm="livepoll"' } }
    : failure(e.status, e.code, e.message)

// Bounded input only (a body within MAX_BODY_BYTES and MAX_JSON_DEPTH, a URL within Node's header limit): the
// formatter prints the refused value, recursively.
const describeParseError = (error: ParseResult.ParseError) =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    .map((issue) => (issue.path.length > 0 ? `${issue.path.join(".")}: ${issue.message}` : issue.message))
    .join("; ")

const decodePollId = Schema.decodeUnknownEither(PollId)
const decodeVoteRequest = Schema.decodeUnknownEither(VoteRequest, { onExcessProperty: "ignore" })
const decodePollDraft = Schema.decodeUnknownEither(PollDraft, { onExcessProperty: "error", errors: "all" })

/** Never throws: an escape that does not decode (`%zz`, a broken UTF-8 sequence) leaves the text as sent. */
const safeDecodeURIComponent = (raw: string) => {
  if (!raw.includes("%")) return raw
  try {
    return decodeURIComponent(raw)
  } catch {
    return raw
  }
}

// Each check tries the parser-free test first (see Domain's textId); the schema runs only to say what is wrong.
const parsePollId = (raw: string): Either.Either<PollId, Reply> => {
  const text = safeDecodeURIComponent(raw)
  if (isPollId(text)) return Either.right(text)
  return Either.mapLeft(decodePollId(text), (e) => failure(400, "invalid_poll_id", `poll_id ${describeParseError(e)}`))
}

const parseVoteRequest = (json: unknown): Either.Either<VoteRequest, Reply> => {
  const body = voteRequestOf(json)
  if (body !== undefined) return Either.right(body)
  return Either.mapLeft(decodeVoteRequest(json), (e) => failure(400, "invalid_request", describeParseError(e)))
}

/**
 * Whether the arrays and objects of `text` nest deeper than `max`, counted in one pass without recursion (brackets
 * inside strings do not count). Valid JSON needs two characters a level, so a short text (any usual vote) is not
 * scanned at all; invalid JSON may be miscounted, but JSON.parse refuses it anyway.
 */
export const nestsDeeperThan = (text: string, max: number): boolean => {
  if (text.length <= 2 * max) return false
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 0x5c) i++
      else if (c === 0x22) inString = false
    } else if (c === 0x22) inString = true
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true
    } else if (c === 0x5d || c === 0x7d) depth--
  }
  return false
}

const TOO_DEEP = failure(400, "invalid_json", `request body is nested deeper than ${MAX_JSON_DEPTH} levels`)

const parseJson = (text: string): Either.Either<unknown, Reply> => {
  if (text.trim() === "") return Either.left(failure(400, "invalid_request", "request body is empty; expected JSON"))
  if (nestsDeeperThan(text, MAX_JSON_DEPTH)) return Either.left(TOO_DEEP)
  try {
    return Either.right(JSON.parse(text))
  } catch {
    return Either.left(failure(400, "invalid_json", "request body is not valid JSON"))
  }
}

const cookie = (req: IncomingMessage, name: string): string | undefined => {
  const header = req.headers.cookie
  if (header === undefined) return undefined
  for (const part of header.split(";")) {
    const eq = part.indexOf("=")
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim()
  }
  return undefined
}

/** The voter: `voter_id` in the body, else the `voter` cookie the page sets. */
const voterOf = (req: IncomingMessage, fromBody: VoterId | undefined): VoterId | undefined => {
  if (fromBody !== undefined) return fromBody
  const fromCookie = cookie(req, "voter")
  if (fromCookie === undefined) return undefined
  return isVoterId(fromCookie) ? fromCookie : undefined
}

/** The token of an `Authorization: Bearer <token>` header (the scheme in any case), or undefined. */
const bearerToken = (header: string | undefined): string | undefined => {
  const match = header === undefined ? null : /^bearer[ \t]+(\S+)[ \t]*$/i.exec(header)
  return match === null ? undefined : match[1]
}

const tallyBody = (pollId: string, t: Voting.Tally) =>
  t.poll === undefined
    ? { poll_id: pollId, results: t.counts, served_via: t.servedVia }
    : {
        poll_id: pollId,
        results: t.counts,
        served_via: t.servedVia,
        question: t.poll.question,
        options: t.poll.options.map((o) => ({ id: o.id, label: o.label, votes: t.counts[o.id] ?? 0 })),
        one_vote_per_voter: t.poll.one_vote_per_voter,
        closes_at: t.poll.closes_at,
        closed: t.poll.closed
      }

const pollBody = (poll: PollDefinition, now: number) => ({ ...poll, open: isOpen(poll, now) })

/** The handlers, over the services they use (looked up once, not per request). */
export const makeApi = (services: {
  readonly store: VoteStoreShape
  readonly polls: PollsShape
  readonly feed: FeedShape
}) => {
  const { store, polls, feed } = services
  const voting = Voting.make(polls, store)

  const vote = (rawPollId: string, text: string, req?: IncomingMessage): Effect.Effect<Reply> => {
    const pollId = parsePollId(rawPollId)
    if (Either.isLeft(pollId)) return Effect.succeed(pollId.left)
    const json = parseJson(text)
    if (Either.isLeft(json)) return Effect.succeed(json.left)
    const body = parseVoteRequest(json.right)
    if (Either.isLeft(body)) return Effect.succeed(body.left)
    const { option_id, voter_id } = body.right
    const voter = req === undefined ? voter_id : voterOf(req, voter_id)
    return voting.cast(pollId.right, option_id, voter).pipe(
      Effect.zipLeft(feed.local(pollId.right)),
      Effect.match({
        onFailure: fromError,
        onSuccess: () => reply(200, { poll_id: pollId.right, option_id })
      })
    )
  }

  const tally = (pollId: PollId, fresh = false) => Effect.map(voting.tally(pollId, fresh), (t) => tallyBody(pollId, t))

  const results = (rawPollId: string): Effect.Effect<Reply> => {
    const pollId = parsePollId(rawPollId)
    if (Either.isLeft(pollId)) return Effect.succeed(pollId.left)
    return tally(pollId.right).pipe(Effect.match({ onFailure: fromError, onSuccess: (body) => reply(200, body) }))
  }

  const health: Effect.Effect<Reply> = Effect.map(store.health, (h) => {
    // Degraded too when a buffer's flushes keep failing or its journal cannot be written: a stuck buffer is an outage.
    const ok = h.nodes.every((n) => n.reachable) && !h.flushes?.some((f) => f.failing) && h.journal?.ok !== false
    return reply(ok ? 200 : 503, {
      status: ok ? "ok" : "degraded",
      nodes: h.nodes,
      pending_votes: h.pendingVotes,
      ...(h.flushes && {
        flushes: h.flushes.map((f) => ({
          node: f.node,
          pending_votes: f.pendingVotes,
          failing: f.failing,
          failing_since_ms_ago: f.failingSinceMsAgo,
          last_failure_ms_ago: f.lastFailureMsAgo,
          last_success_ms_ago: f.lastSuccessMsAgo,
          last_error: f.lastError
        }))
      }),
      ...(h.journal && {
        journal: {
          ok: h.journal.ok,
          failing_since_ms_ago: h.journal.failingSinceMsAgo,
          last_failure_ms_ago: h.journal.lastFailureMsAgo,
          last_error: h.journal.lastError
        }
      })
    })
  })

  const createPoll = (text: string): Effect.Effect<Reply> => {
    const json = parseJson(text)
    if (Either.isLeft(json)) return Effect.succeed(json.left)
    const draft = decodePollDraft(json.right)
    if (Either.isLeft(draft)) return Effect.succeed(failure(400, "invalid_poll", describeParseError(draft.left)))
    return Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      const id = draft.right.id ?? (randomBytes(6).toString("base64url") as PollId)
      const key = organiserKey()
      const poll = yield* polls.create(define(draft.right, id, new Date(now)), key.hash)
      // The only time the key is shown: the store keeps its hash.
      return reply(201, { ...pollBody(poll, now), organiser_key: key.key })
    }).pipe(Effect.catchAll((e) => Effect.succeed(fromError(e))))
  }

  const withPoll = (rawPollId: string, use: (pollId: PollId) => Effect.Effect<Reply>) => {
    const pollId = parsePollId(rawPollId)
    return Either.isLeft(pollId) ? Effect.succeed(pollId.left) : use(pollId.right)
  }

  const getPoll = (rawPollId: string) =>
    withPoll(rawPollId, (pollId) =>
      Effect.gen(function* () {
        const poll = yield* polls.get(pollId)
        if (Option.isNone(poll)) return failure(404, "poll_not_found", `no poll ${pollId} has been defined`)
        return reply(200, pollBody(poll.value, yield* Clock.currentTimeMillis))
      }).pipe(Effect.catchAll((e) => Effect.succeed(fromError(e))))
    )

  const closePoll = (rawPollId: string, authorization: string | undefined) =>
    withPoll(rawPollId, (pollId) =>
      Effect.gen(function* () {
        const poll = yield* polls.close(pollId, bearerToken(authorization))
        yield* feed.changed(pollId)
        return reply(200, pollBody(poll, yield* Clock.currentTimeMillis))
      }).pipe(Effect.catchAll((e) => Effect.succeed(fromError(e))))
    )

  return { vote, results, health, createPoll, getPoll, closePoll, tally }
}

const HEALTHY = reply(200, { status: "healthy" })

/** A request's route: what to run, or the reply for a path or method that has no handler. */
export type Route =
  | { readonly _tag: "Root" }
  | { readonly _tag: "Health" }
  | { readonly _tag: "Vote"; readonly pollId: string }
  | { readonly _tag: "Results"; readonly pollId: string }
  | { readonly _tag: "CreatePoll" }
  | { readonly _tag: "GetPoll"; readonly pollId: string; readonly page: boolean }
  | { readonly _tag: "ClosePoll"; readonly pollId: string }
  | { readonly _tag: "Stream"; readonly pollId: string }
  | { readonly _tag: "Reject"; readonly reply: Reply }

// HEAD is GET without the body (node:http leaves the body out of a HEAD answer by itself).
const only = (method: string, path: string, allowed: "GET" | "POST", route: Route): Route =>
  method === allowed || (method === "HEAD" && allowed === "GET")
    ? route
    : {
        _tag: "Reject",
        reply: {
          ...failure(
            405,
            "method_not_allowed",
            `${method} is not allowed on ${path}; use ${allowed === "GET" ? "GET or HEAD" : allowed}`
          ),
          headers: { allow: allowed === "GET" ? "GET, HEAD" : allowed }
        }
      }

/**
 * Every route exists bare and under /api/v1. The one exception in meaning: bare `GET /polls/{id}` from a browser
 * (Accept: text/html) is the poll's page; anything else there gets the definition as JSON.
 */
export const route = (method: string, url: string, accept = ""): Route => {
  const query = url.indexOf("?")
  const path = query === -1 ? url : url.slice(0, query)
  const api = path.startsWith("/api/v1") && (path.length === 7 || path[7] === "/")
  const bare = api ? path.slice(7) : path
  const parts = bare.split("/").filter((p, i, all) => p !== "" || (i > 0 && i < all.length - 1))
  const [first, id, action] = parts
  switch (parts.length) {
    case 0:
      return only(method, path, "GET", { _tag: "Root" })
    case 1:
      if (first === "health") return only(method, path, "GET", { _tag: "Health" })
      if (first === "polls") return only(method, path, "POST", { _tag: "CreatePoll" })
      break
    case 2:
      if (first === "vote") return only(method, path, "POST", { _tag: "Vote", pollId: id! })
      if (first === "results") return only(method, path, "GET", { _tag: "Results", pollId: id! })
      if (first === "polls") {
        return only(method, path, "GET", { _tag: "GetPoll", pollId: id!, page: !api && accept.includes("text/html") })
      }
      break
    case 3:
      if (first === "polls" && action === "close") return only(method, path, "POST", { _tag: "ClosePoll", pollId: id! })
      if (first === "polls" && action === "stream") return only(method, path, "GET", { _tag: "Stream", pollId: id! })
      break
  }
  return { _tag: "Reject", reply: failure(404, "not_found", `no route ${path}`) }
}

/** Writes a reply, unless an answer has begun already or the connection is gone (or answered by the listener). */
const send = (res: ServerResponse, r: Reply) => {
  if (res.headersSent || res.destroyed || res.socket?.writableEnded === true) return
  const json = JSON.stringify(r.body)
  res.writeHead(r.status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(json),
    ...r.headers
  })
  res.end(json)
}

const TOO_LARGE: Reply = {
  ...failure(413, "payload_too_large", `request body is over ${MAX_BODY_BYTES} bytes`),
  // The rest of an oversized body is not wanted: the connection ends after this answer.
  headers: { connection: "close" }
}

/**
 * Reads the body up to `limit` bytes. Past it the rest is read and thrown away for up to DISCARD_MS, so a client
 * still sending gets its 413 instead of a reset connection; then the 413 goes out and the connection closes.
 */
const readBody = (req: IncomingMessage, limit: number, then: (text: string | undefined) => void) => {
  const chunks: Array<Buffer> = []
  let size = Number(req.headers["content-length"] ?? 0) > limit ? limit + 1 : 0
  let done = false
  let discardTimer: NodeJS.Timeout | undefined
  const finish = (text: string | undefined) => {
    if (done) return
    done = true
    if (discardTimer !== undefined) clearTimeout(discardTimer)
    then(text)
  }
  const startDiscarding = () => {
    chunks.length = 0
    discardTimer ??= setTimeout(() => finish(undefined), DISCARD_MS)
  }
  if (size > limit) startDiscarding()
  req.on("data", (chunk: Buffer) => {
    size += chunk.length
    if (size <= limit) chunks.push(chunk)
    else startDiscarding()
  })
  req.on("end", () => {
    if (size > limit) return finish(undefined)
    finish(chunks.length === 1 ? chunks[0]!.toString("utf8") : Buffer.concat(chunks).toString("utf8"))
  })
  // The connection is gone (or the listener has answered it, see clientError): there is no one to answer.
  req.on("error", () => {
    done = true
    if (discardTimer !== undefined) clearTimeout(discardTimer)
  })
}

const sendPage = (req: IncomingMessage, res: ServerResponse, pollId: string) => {
  const html = Page.render(pollId)
  const headers: Record<string, string | number> = {
    "content-type": "text/html; charset=utf-8",
    "content-length": Buffer.byteLength(html),
    "cache-control": "no-store"
  }
  // Gives the browser a voter id once, so one-vote-per-voter polls can tell its second vote from a new voter's.
  if (cookie(req, "voter") === undefined) {
    headers["set-cookie"] = `voter=${randomBytes(12).toString("base64url")}; Path=/; Max-Age=31536000; SameSite=Lax`
  }
  res.writeHead(200, headers)
  res.end(html)
}

const TOO_MANY_STREAMS = failure(503, "too_many_streams", "this instance holds as many live streams as it can")
// The contract allows no 5xx but 503: a failure nobody foresaw is "not done, try again" like any other.
const INTERNAL_ERROR = failure(503, "internal_error", "the server failed to handle this request; try again")

export interface HandlerOptions {
  readonly maxStreams: number
  /** Connections the listener has answered itself (see `layer`): requests parsed on them get no second answer. */
  readonly answered: WeakSet<Socket>
}

/**
 * The HTTP listener: plain `node:http`, with each request's work run as an Effect on the application's runtime.
 * (See the README's "HTTP layer" for why this is not @effect/platform's HttpServer, with the measurements.)
 */
export const makeHandler = (runtime: Runtime.Runtime<Services>, options: HandlerOptions) => {
  const runFork = Runtime.runFork(runtime)
  const api = makeApi({
    store: Context.get(runtime.context, VoteStore),
    polls: Context.get(runtime.context, Polls),
    feed: Context.get(runtime.context, Feed)
  })
  // Streams carry the results only: where they were read from changes from read to read and is not news.
  const hub = LiveResults.makeHub(
    runtime,
    (pollId) => Effect.map(api.tally(pollId, true), ({ served_via: _, ...rest }) => rest),
    { maxStreams: options.maxStreams }
  )
  const failed = (res: ServerResponse, cause: unknown) => {
    runFork(Effect.logError("request failed unexpectedly", Cause.isCause(cause) ? cause : Cause.die(cause)))
    if (res.headersSent) res.destroy()
    else send(res, INTERNAL_ERROR)
  }
  // Each callback of a request (node:http's, the body reader's, the fiber's observer) catches what it throws: a bug
  // answers 503, never ends the process. Written out in each, so the per-request path allocates nothing for it.
  const run = (res: ServerResponse, effect: Effect.Effect<Reply>) => {
    runFork(effect).addObserver((exit) => {
      try {
        if (Exit.isSuccess(exit)) send(res, exit.value)
        else failed(res, exit.cause)
      } catch (error) {
        failed(res, error)
      }
    })
  }
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
        return send(res, HEALTHY)
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
        return Either.isLeft(pollId) ? send(res, pollId.left) : sendPage(req, res, pollId.right)
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

export interface ServerOptions {
  readonly port: number
  readonly host: string
  /** Open connections at once (lowered to fit the open-file limit, see Config's effectiveLimits). */
  readonly maxConnections: number
  /** Live result streams at once (lowered to leave connections to other requests). */
  readonly maxStreams: number
  /** A request's headers must be in within this, counted from its first byte (or from connecting). */
  readonly headersTimeoutMs: number
  /** A request, headers and body, must be in within this: a body shorter than its Content-Length is cut here. */
  readonly requestTimeoutMs: number
  /** An idle keep-alive connection is closed after this. */
  readonly keepAliveTimeoutMs: number
  /** How long shutdown waits for open connections before cutting them. */
  readonly drainMs?: number
}

/** A complete answer written straight to a socket, for refusals made before node:http has a response object. */
const rawAnswer = (status: number, error: string, message: string) => {
  const body = JSON.stringify({ error, message })
  return (
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`
  )
}

/** What a request node:http refused itself (it calls them client errors) is answered. */
const clientErrorAnswer = (error: NodeJS.ErrnoException & { readonly reason?: string }, options: ServerOptions) => {
  switch (error.code) {
    case "HPE_HEADER_OVERFLOW":
      return rawAnswer(431, "headers_too_large", `the request's headers are over ${maxHeaderSize} bytes`)
    case "HPE_CHUNK_EXTENSIONS_OVERFLOW":
      return rawAnswer(413, "payload_too_large", "the request's chunk extensions are too large")
    case "ERR_HTTP_REQUEST_TIMEOUT":
      return rawAnswer(
        408,
        "request_timeout",
        `the request did not arrive in time: headers are due within ${options.headersTimeoutMs} ms, the whole ` +
          `request within ${options.requestTimeoutMs} ms`
      )
    default:
      return rawAnswer(
        400,
        "bad_request",
        `the request is not valid HTTP/1.1${error.reason ? `: ${error.reason}` : ""}`
      )
  }
}

const openFileLimit = () => {
  try {
    return parseOpenFileLimit(readFileSync("/proc/self/limits", "utf8"))
  } catch {
    return undefined
  }
}

/**
 * Serves until the scope closes. On close: stop accepting, end live streams, let running requests finish, close
 * keep-alive connections as they go idle, cut whatever is left after `drainMs`. Only then do the store layers shut
 * down (the write-behind buffer's final flush), since they were acquired first.
 *
 * Every answer is JSON, including those node:http would give itself: a connection over the cap, a request that is not
 * HTTP, headers too large, a request too slow to arrive. Those are written on the socket, which is then closed.
 */
export const layer = (options: ServerOptions): Layer.Layer<never, Error, Services> =>
  Layer.scopedDiscard(
    Effect.gen(function* () {
      const fileLimit = openFileLimit()
      const limits = effectiveLimits(options, fileLimit)
      const answered = new WeakSet<Socket>()
      const runtime = yield* Effect.runtime<Services>()
      const runFork = Runtime.runFork(runtime)
      const { handler, hub } = makeHandler(runtime, { maxStreams: limits.streams, answered })
      const server = createServer(
        {
          keepAliveTimeout: options.keepAliveTimeoutMs,
          headersTimeout: Math.min(options.headersTimeoutMs, options.requestTimeoutMs),
          requestTimeout: options.requestTimeoutMs,
          // How often node:http looks for requests past those timeouts: their precision.
          connectionsCheckingInterval: Math.min(1000, Math.max(25, Math.floor(options.headersTimeoutMs / 4))),
          // An HTTP/1.0 client may leave Host out; nothing here routes by it, so it is served rather than refused.
          requireHostHeader: false
        },
        handler
      )
      // An `Expect` other than 100-continue: node:http would answer 417 itself, with an empty body.
      server.on("checkExpectation", (_req: IncomingMessage, res: ServerResponse) =>
        send(res, failure(417, "expectation_failed", "only Expect: 100-continue is supported"))
      )

      // Answer, close our side, and keep reading for LINGER_MS: closing with the client's bytes unread would reset
      // the connection, and a reset can overtake the answer.
      const closeWith = (socket: Socket, answer: string) => {
        answered.add(socket)
        socket.end(answer)
        const linger = setTimeout(() => socket.destroy(), LINGER_MS)
        socket.once("close", () => clearTimeout(linger))
      }

      let open = 0
      let refusing = 0
      const TOO_MANY_CONNECTIONS = rawAnswer(
        503,
        "too_many_connections",
        `this instance holds as many connections as it can (${limits.connections}); try again shortly`
      )
      server.on("connection", (socket: Socket) => {
        if (open < limits.connections) {
          open++
          socket.once("close", () => open--)
          return
        }
        // Past the cap a connection is answered, not reset; past the few that may wait for that, it is cut.
        if (refusing >= limits.refusing) return void socket.destroy()
        refusing++
        socket.once("close", () => refusing--)
        closeWith(socket, TOO_MANY_CONNECTIONS)
      })
      // The answer to a request node:http could not read goes after every earlier answer on the connection, or it
      // would be taken for one of them (a vote counted, its 200 replaced by this 400).
      const answerInTurn = (socket: Socket, answer: string) => {
        if (!socket.writable) return void socket.destroy()
        const inFlight = (socket as { _httpMessage?: ServerResponse | null })._httpMessage
        if (inFlight == null) return closeWith(socket, answer)
        // The request being answered is the one that failed (its body broke off or came too slowly): this answers it,
        // unless its own answer has begun.
        if (!inFlight.req.complete) return inFlight.headersSent ? void socket.destroy() : closeWith(socket, answer)
        inFlight.once("finish", () => answerInTurn(socket, answer))
      }
      server.on("clientError", (error: NodeJS.ErrnoException, socket: Socket) => {
        if (answered.has(socket)) return
        answered.add(socket)
        if (error.code === "ECONNRESET") return void socket.destroy()
        answerInTurn(socket, clientErrorAnswer(error, options))
      })
      // node:http hands CONNECT to this event and, with no listener, destroys the socket unanswered.
      server.on("connect", (_req: IncomingMessage, socket: Socket) => {
        closeWith(socket, rawAnswer(400, "bad_request", "CONNECT is not supported"))
        socket.resume()
      })

      yield* Effect.async<void, Error>((resume) => {
        const failed = (error: NodeJS.ErrnoException) =>
          resume(
            Effect.fail(
              new Error(
                error.code === "EADDRINUSE"
                  ? `PORT ${options.port} is already in use on ${options.host}`
                  : `cannot listen on ${options.host}:${options.port}: ${error.message}`
              )
            )
          )
        server.once("error", failed)
        server.listen(options.port, options.host, () => {
          server.off("error", failed)
          resume(Effect.void)
        })
      })
      // Once listening, an error is one connection not accepted (EMFILE, say): worth a line, never the process.
      let warnedAt = 0
      server.on("error", (error: Error) => {
        if (Date.now() - warnedAt < 1000) return
        warnedAt = Date.now()
        runFork(Effect.logWarning(`listener: ${error.message}`))
      })
      yield* Effect.logInfo(
        `listening on http://${options.host}:${options.port} max_connections=${limits.connections} ` +
          `max_streams=${limits.streams} open_file_limit=${fileLimit ?? "unknown"}`
      )
      yield* Effect.addFinalizer(() =>
        Effect.async<void>((resume) => {
          const idle = setInterval(() => server.closeIdleConnections(), 50)
          const deadline = setTimeout(() => server.closeAllConnections(), options.drainMs ?? 3000)
          server.close(() => {
            clearInterval(idle)
            clearTimeout(deadline)
            resume(Effect.void)
          })
          hub.close()
          server.closeIdleConnections()
        })
      )
    })
  )
