import { Effect, Either, Exit, Layer, ParseResult, Runtime, Schema } from "effect"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { VoteError } from "./Domain.js"
import { PollId, VoteBody } from "./Domain.js"
import { VoteStore } from "./VoteStore.js"

export const MAX_BODY_BYTES = 16 * 1024

/** What a request ends in: a status and a JSON body. */
export interface Reply {
  readonly status: number
  readonly body: unknown
}

const reply = (status: number, body: unknown): Reply => ({ status, body })
const failure = (status: number, error: string, message: string): Reply => reply(status, { error, message })

const fromStoreError = (e: VoteError): Reply => {
  switch (e._tag) {
    case "StoreUnavailable":
      return failure(503, "store_unavailable", e.message)
    case "BufferFull":
      return failure(503, "buffer_full", e.message)
    case "JournalFailed":
      return failure(503, "journal_unavailable", e.message)
    case "TooManyOptions":
      return failure(422, "too_many_options", e.message)
  }
}

const describeParseError = (error: ParseResult.ParseError) =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    .map((issue) => (issue.path.length > 0 ? `${issue.path.join(".")}: ${issue.message}` : issue.message))
    .join("; ")

const decodePollId = Schema.decodeUnknownEither(PollId)
const decodeVoteBody = Schema.decodeUnknownEither(VoteBody, { onExcessProperty: "ignore" })

const parsePollId = (raw: string) =>
  Either.mapLeft(decodePollId(safeDecodeURIComponent(raw)), (e) =>
    failure(400, "invalid_poll_id", `poll_id ${describeParseError(e)}`)
  )

const safeDecodeURIComponent = (raw: string) => {
  try {
    return decodeURIComponent(raw)
  } catch {
    return raw
  }
}

export const vote = (rawPollId: string, text: string): Effect.Effect<Reply, never, VoteStore> => {
  const pollId = parsePollId(rawPollId)
  if (Either.isLeft(pollId)) return Effect.succeed(pollId.left)
  if (text.trim() === "") return Effect.succeed(failure(400, "invalid_request", "request body is empty; expected JSON"))
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    return Effect.succeed(failure(400, "invalid_json", "request body is not valid JSON"))
  }
  const body = decodeVoteBody(json)
  if (Either.isLeft(body)) return Effect.succeed(failure(400, "invalid_request", describeParseError(body.left)))
  const { option_id } = body.right
  return VoteStore.pipe(
    Effect.flatMap((store) => store.vote(pollId.right, option_id)),
    Effect.match({
      onFailure: fromStoreError,
      onSuccess: () => reply(200, { poll_id: pollId.right, option_id })
    })
  )
}

export const results = (rawPollId: string): Effect.Effect<Reply, never, VoteStore> => {
  const pollId = parsePollId(rawPollId)
  if (Either.isLeft(pollId)) return Effect.succeed(pollId.left)
  return VoteStore.pipe(
    Effect.flatMap((store) => store.results(pollId.right)),
    Effect.match({
      onFailure: fromStoreError,
      onSuccess: (r) => reply(200, { poll_id: pollId.right, results: r.counts, served_via: r.servedVia })
    })
  )
}

export const health: Effect.Effect<Reply, never, VoteStore> = VoteStore.pipe(
  Effect.flatMap((store) => store.health),
  Effect.map((h) => {
    const ok = h.nodes.every((n) => n.reachable)
    return reply(ok ? 200 : 503, { status: ok ? "ok" : "degraded", nodes: h.nodes, pending_votes: h.pendingVotes })
  })
)

const HEALTHY = reply(200, { status: "healthy" })

/** A request's route: what to run, or the reply for a path or method that has no handler. */
export type Route =
  | { readonly _tag: "Vote"; readonly pollId: string }
  | { readonly _tag: "Results"; readonly pollId: string }
  | { readonly _tag: "Health" }
  | { readonly _tag: "Root" }
  | { readonly _tag: "Reject"; readonly reply: Reply }

const notAllowed = (method: string, path: string, allowed: string): Route => ({
  _tag: "Reject",
  reply: failure(405, "method_not_allowed", `${method} is not allowed on ${path}; use ${allowed}`)
})

/** Every route exists bare and under /api/v1. */
export const route = (method: string, url: string): Route => {
  const query = url.indexOf("?")
  const path = query === -1 ? url : url.slice(0, query)
  const bare = path.startsWith("/api/v1") && (path.length === 7 || path[7] === "/") ? path.slice(7) : path
  const parts = bare.split("/").filter((p, i, all) => p !== "" || (i > 0 && i < all.length - 1))
  if (parts.length === 0) return method === "GET" ? { _tag: "Root" } : notAllowed(method, path, "GET")
  if (parts.length === 1 && parts[0] === "health") {
    return method === "GET" ? { _tag: "Health" } : notAllowed(method, path, "GET")
  }
  if (parts.length === 2 && parts[0] === "vote") {
    return method === "POST" ? { _tag: "Vote", pollId: parts[1]! } : notAllowed(method, path, "POST")
  }
  if (parts.length === 2 && parts[0] === "results") {
    return method === "GET" ? { _tag: "Results", pollId: parts[1]! } : notAllowed(method, path, "GET")
  }
  return { _tag: "Reject", reply: failure(404, "not_found", `no route ${path}`) }
}

const send = (res: ServerResponse, r: Reply) => {
  const json = JSON.stringify(r.body)
  const headers: Record<string, string | number> = {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(json)
  }
  // An oversized body may still be arriving: closing the connection stops the client from sending the rest.
  if (r.status === 413) headers.connection = "close"
  res.writeHead(r.status, headers)
  res.end(json)
}

/** Reads the body up to `limit` bytes; past it, answers 413 and lets Node discard the rest. */
const readBody = (req: IncomingMessage, limit: number, then: (text: string | undefined) => void) => {
  if (Number(req.headers["content-length"] ?? 0) > limit) {
    req.resume()
    return then(undefined)
  }
  const chunks: Array<Buffer> = []
  let size = 0
  let done = false
  req.on("data", (chunk: Buffer) => {
    if (done) return
    size += chunk.length
    if (size <= limit) return void chunks.push(chunk)
    done = true
    then(undefined)
  })
  req.on("end", () => {
    if (done) return
    done = true
    then(chunks.length === 1 ? chunks[0]!.toString("utf8") : Buffer.concat(chunks).toString("utf8"))
  })
  req.on("error", () => {
    if (done) return
    done = true
    then("")
  })
}

const TOO_LARGE = failure(413, "payload_too_large", `request body is over ${MAX_BODY_BYTES} bytes`)

/**
 * The HTTP listener: plain `node:http`, with each request's work run as an Effect on the application's runtime.
 * Measured against @effect/platform's HttpServer in bench/; see the README's "HTTP layer" for the numbers.
 */
export const makeHandler = (runtime: Runtime.Runtime<VoteStore>) => {
  const runFork = Runtime.runFork(runtime)
  const run = (res: ServerResponse, effect: Effect.Effect<Reply, never, VoteStore>) => {
    const fiber = runFork(effect)
    fiber.addObserver((exit) => {
      if (Exit.isSuccess(exit)) return send(res, exit.value)
      runFork(Effect.logError("request failed unexpectedly", exit.cause))
      send(res, failure(500, "internal_error", "the server failed to handle this request"))
    })
  }
  return (req: IncomingMessage, res: ServerResponse) => {
    const r = route(req.method ?? "GET", req.url ?? "/")
    switch (r._tag) {
      case "Root":
        return send(res, HEALTHY)
      case "Reject":
        return send(res, r.reply)
      case "Health":
        return run(res, health)
      case "Results":
        return run(res, results(r.pollId))
      case "Vote":
        return readBody(req, MAX_BODY_BYTES, (text) =>
          text === undefined ? send(res, TOO_LARGE) : run(res, vote(r.pollId, text))
        )
    }
  }
}

export interface ServerOptions {
  readonly port: number
  readonly host: string
  /** How long shutdown waits for open connections before cutting them. */
  readonly drainMs?: number
}

/**
 * Serves until the scope closes. On close: stop accepting, let running requests finish, close keep-alive
 * connections as they go idle, cut whatever is left after `drainMs`. Only then do the store layers shut down
 * (the write-behind buffer's final flush), since they were acquired first.
 */
export const layer = (options: ServerOptions): Layer.Layer<never, never, VoteStore> =>
  Layer.scopedDiscard(
    Effect.gen(function* () {
      const handler = makeHandler(yield* Effect.runtime<VoteStore>())
      const server = createServer({ keepAliveTimeout: 5000 }, handler)
      yield* Effect.async<void, never>((resume) => {
        server.listen(options.port, options.host, () => resume(Effect.void))
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
          server.closeIdleConnections()
        })
      )
    })
  )
