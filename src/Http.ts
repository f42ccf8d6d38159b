import { Clock, Context, Effect, Either, Exit, Layer, Option, ParseResult, Runtime, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { PollDefinition, VoterId } from "./Domain.js"
import { isOpen, isPollId, isVoterId, PollDraft, PollId, VoteRequest, voteRequestOf } from "./Domain.js"
import { Feed, type FeedShape } from "./Feed.js"
import * as LiveResults from "./LiveResults.js"
import * as Page from "./Page.js"
import { define, Polls, type PollsShape } from "./Polls.js"
import { VoteStore, type VoteStoreShape } from "./VoteStore.js"
import * as Voting from "./Voting.js"

export const MAX_BODY_BYTES = 16 * 1024
/** How long an oversized body is read and thrown away before the 413, so the client is not cut off mid-send. */
const DISCARD_MS = 1000

type Services = VoteStore | Polls | Feed

/** What a request ends in: a status, a JSON body and any extra headers. */
export interface Reply {
  readonly status: number
  readonly body: unknown
  readonly headers?: Readonly<Record<string, string>>
}

const reply = (status: number, body: unknown): Reply => ({ status, body })
const failure = (status: number, error: string, message: string): Reply => reply(status, { error, message })

/** Every typed failure, to its status and error code: the one place the mapping lives. */
const fromError = (
  e: Voting.CastError | { readonly _tag: "PollNotFound" | "PollExists"; readonly message: string }
) => {
  switch (e._tag) {
    case "StoreUnavailable":
      return failure(503, "store_unavailable", e.message)
    case "BufferFull":
      return failure(503, "buffer_full", e.message)
    case "JournalFailed":
      return failure(503, "journal_unavailable", e.message)
    case "TooManyOptions":
      return failure(422, "too_many_options", e.message)
    case "UnknownOption":
      return failure(422, "unknown_option", e.message)
    case "PollClosed":
      return failure(409, "poll_closed", e.message)
    case "AlreadyVoted":
      return failure(409, "already_voted", e.message)
    case "VoterRequired":
      return failure(400, "voter_required", e.message)
    case "PollNotFound":
      return failure(404, "poll_not_found", e.message)
    case "PollExists":
      return failure(409, "poll_exists", e.message)
  }
}

const describeParseError = (error: ParseResult.ParseError) =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    .map((issue) => (issue.path.length > 0 ? `${issue.path.join(".")}: ${issue.message}` : issue.message))
    .join("; ")

const decodePollId = Schema.decodeUnknownEither(PollId)
const decodeVoteRequest = Schema.decodeUnknownEither(VoteRequest, { onExcessProperty: "ignore" })
const decodePollDraft = Schema.decodeUnknownEither(PollDraft, { onExcessProperty: "error", errors: "all" })

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

const parseJson = (text: string): Either.Either<unknown, Reply> => {
  if (text.trim() === "") return Either.left(failure(400, "invalid_request", "request body is empty; expected JSON"))
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
    const ok = h.nodes.every((n) => n.reachable)
    return reply(ok ? 200 : 503, { status: ok ? "ok" : "degraded", nodes: h.nodes, pending_votes: h.pendingVotes })
  })

  const createPoll = (text: string): Effect.Effect<Reply> => {
    const json = parseJson(text)
    if (Either.isLeft(json)) return Effect.succeed(json.left)
    const draft = decodePollDraft(json.right)
    if (Either.isLeft(draft)) return Effect.succeed(failure(400, "invalid_poll", describeParseError(draft.left)))
    return Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      const id = draft.right.id ?? (randomBytes(6).toString("base64url") as PollId)
      const poll = yield* polls.create(define(draft.right, id, new Date(now)))
      return reply(201, pollBody(poll, now))
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

  const closePoll = (rawPollId: string) =>
    withPoll(rawPollId, (pollId) =>
      Effect.gen(function* () {
        const poll = yield* polls.close(pollId)
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

const only = (method: string, path: string, allowed: string, route: Route): Route =>
  method === allowed
    ? route
    : {
        _tag: "Reject",
        reply: {
          ...failure(405, "method_not_allowed", `${method} is not allowed on ${path}; use ${allowed}`),
          headers: { allow: allowed }
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

const send = (res: ServerResponse, r: Reply) => {
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
  req.on("error", () => finish(""))
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

/**
 * The HTTP listener: plain `node:http`, with each request's work run as an Effect on the application's runtime.
 * (See the README's "HTTP layer" for why this is not @effect/platform's HttpServer, with the measurements.)
 */
export const makeHandler = (runtime: Runtime.Runtime<Services>) => {
  const runFork = Runtime.runFork(runtime)
  const api = makeApi({
    store: Context.get(runtime.context, VoteStore),
    polls: Context.get(runtime.context, Polls),
    feed: Context.get(runtime.context, Feed)
  })
  // Streams carry the results only: where they were read from changes from read to read and is not news.
  const hub = LiveResults.makeHub(runtime, (pollId) =>
    Effect.map(api.tally(pollId, true), ({ served_via: _, ...rest }) => rest)
  )
  const run = (res: ServerResponse, effect: Effect.Effect<Reply>) => {
    runFork(effect).addObserver((exit) => {
      if (Exit.isSuccess(exit)) return send(res, exit.value)
      runFork(Effect.logError("request failed unexpectedly", exit.cause))
      send(res, failure(500, "internal_error", "the server failed to handle this request"))
    })
  }
  const withBody = (req: IncomingMessage, res: ServerResponse, use: (text: string) => Effect.Effect<Reply>) =>
    readBody(req, MAX_BODY_BYTES, (text) => (text === undefined ? send(res, TOO_LARGE) : run(res, use(text))))

  const handler = (req: IncomingMessage, res: ServerResponse) => {
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
        return withBody(req, res, () => api.closePoll(r.pollId))
      case "Stream": {
        const pollId = parsePollId(r.pollId)
        if (Either.isLeft(pollId)) return send(res, pollId.left)
        if (!hub.attach(pollId.right, res)) {
          send(res, failure(503, "too_many_streams", "this instance holds as many live streams as it can"))
        }
        return
      }
    }
  }
  return { handler, hub }
}

export interface ServerOptions {
  readonly port: number
  readonly host: string
  /** How long shutdown waits for open connections before cutting them. */
  readonly drainMs?: number
}

/**
 * Serves until the scope closes. On close: stop accepting, end live streams, let running requests finish, close
 * keep-alive connections as they go idle, cut whatever is left after `drainMs`. Only then do the store layers shut
 * down (the write-behind buffer's final flush), since they were acquired first.
 */
export const layer = (options: ServerOptions): Layer.Layer<never, Error, Services> =>
  Layer.scopedDiscard(
    Effect.gen(function* () {
      const { handler, hub } = makeHandler(yield* Effect.runtime<Services>())
      const server = createServer({ keepAliveTimeout: 5000 }, handler)
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
      yield* Effect.logInfo(`listening on http://${options.host}:${options.port}`)
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
