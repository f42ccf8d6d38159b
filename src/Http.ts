import { HttpMiddleware, HttpRouter, HttpServer, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Effect, Layer, ParseResult, Schema } from "effect"
import type { IncomingMessage } from "node:http"
import type { PollId, VoteError } from "./Domain.js"
import { PollId as PollIdSchema, VoteBody } from "./Domain.js"
import { VoteStore } from "./VoteStore.js"

export const MAX_BODY_BYTES = 16 * 1024

/** Every failure a request can end in, with the status and the JSON body it is answered with. */
export class ApiError extends Schema.TaggedError<ApiError>()("ApiError", {
  status: Schema.Number,
  code: Schema.String,
  message: Schema.String
}) {}

const apiError = (status: number, code: string, message: string) => new ApiError({ status, code, message })

const errorResponse = (e: ApiError) =>
  HttpServerResponse.unsafeJson(
    { error: e.code, message: e.message },
    // An oversized body may still be arriving; closing the connection stops the client from sending the rest.
    e.status === 413 ? { status: e.status, headers: { connection: "close" } } : { status: e.status }
  )

const fromStoreError = (e: VoteError): ApiError => {
  switch (e._tag) {
    case "StoreUnavailable":
      return apiError(503, "store_unavailable", e.message)
    case "BufferFull":
      return apiError(503, "buffer_full", e.message)
    case "JournalFailed":
      return apiError(503, "journal_unavailable", e.message)
    case "TooManyOptions":
      return apiError(422, "too_many_options", e.message)
  }
}

const describeParseError = (error: ParseResult.ParseError) =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    .map((issue) => (issue.path.length > 0 ? `${issue.path.join(".")}: ${issue.message}` : issue.message))
    .join("; ")

const decodePollId = Schema.decodeUnknown(PollIdSchema)
const decodeVoteBody = Schema.decodeUnknown(VoteBody)

const pollIdFromPath = HttpRouter.params.pipe(
  Effect.flatMap((params) => decodePollId(params.poll_id)),
  Effect.mapError((e) => apiError(400, "invalid_poll_id", `poll_id ${describeParseError(e)}`))
)

const tooLarge = () => apiError(413, "payload_too_large", `request body is over ${MAX_BODY_BYTES} bytes`)

/**
 * Reads the body off the Node request, stopping at the limit. The platform's own reader destroys the socket when a
 * body is too large, which leaves the client with no answer at all; this one answers 413 and lets Node discard the rest.
 */
const readBody = (request: IncomingMessage, limit: number) =>
  Effect.async<string, ApiError>((resume) => {
    const chunks: Array<Buffer> = []
    let size = 0
    const cleanup = () => {
      request.off("data", onData)
      request.off("end", onEnd)
      request.off("error", onError)
    }
    const onData = (chunk: Buffer) => {
      size += chunk.length
      if (size <= limit) return void chunks.push(chunk)
      cleanup()
      request.resume()
      resume(Effect.fail(tooLarge()))
    }
    const onEnd = () => {
      cleanup()
      resume(Effect.succeed(Buffer.concat(chunks).toString("utf8")))
    }
    const onError = () => {
      cleanup()
      resume(Effect.fail(apiError(400, "invalid_request", "the request body could not be read")))
    }
    request.on("data", onData)
    request.on("end", onEnd)
    request.on("error", onError)
    return Effect.sync(cleanup)
  })

const jsonBody = Effect.gen(function* () {
  const request = yield* HttpServerRequest.HttpServerRequest
  if (Number(request.headers["content-length"] ?? 0) > MAX_BODY_BYTES) return yield* tooLarge()
  const text = yield* readBody(NodeHttpServerRequest.toIncomingMessage(request), MAX_BODY_BYTES)
  if (text.trim() === "") return yield* apiError(400, "invalid_request", "request body is empty; expected JSON")
  return yield* Effect.try({
    try: () => JSON.parse(text) as unknown,
    catch: () => apiError(400, "invalid_json", "request body is not valid JSON")
  })
})

const vote = Effect.gen(function* () {
  const pollId = yield* pollIdFromPath
  const body = yield* jsonBody
  const { option_id } = yield* decodeVoteBody(body, { onExcessProperty: "ignore" }).pipe(
    Effect.mapError((e) => apiError(400, "invalid_request", describeParseError(e)))
  )
  const store = yield* VoteStore
  yield* store.vote(pollId, option_id).pipe(Effect.mapError(fromStoreError))
  return HttpServerResponse.unsafeJson({ poll_id: pollId, option_id })
})

const results = Effect.gen(function* () {
  const pollId: PollId = yield* pollIdFromPath
  const store = yield* VoteStore
  const r = yield* store.results(pollId).pipe(Effect.mapError(fromStoreError))
  return HttpServerResponse.unsafeJson({ poll_id: pollId, results: r.counts, served_via: r.servedVia })
})

const health = Effect.gen(function* () {
  const store = yield* VoteStore
  const h = yield* store.health
  const ok = h.nodes.every((n) => n.reachable)
  return HttpServerResponse.unsafeJson(
    { status: ok ? "ok" : "degraded", nodes: h.nodes, pending_votes: h.pendingVotes },
    { status: ok ? 200 : 503 }
  )
})

const routes = HttpRouter.empty.pipe(
  HttpRouter.get("/", HttpServerResponse.unsafeJson({ status: "healthy" })),
  HttpRouter.post("/vote/:poll_id", vote),
  HttpRouter.get("/results/:poll_id", results),
  HttpRouter.get("/health", health)
)

/** Paths that exist, with the one method each accepts: anything else on them is a 405, not a 404. */
const knownPaths: ReadonlyArray<readonly [RegExp, string]> = [
  [/^(\/api\/v1)?\/?$/, "GET"],
  [/^(\/api\/v1)?\/vote\/[^/]+\/?$/, "POST"],
  [/^(\/api\/v1)?\/results\/[^/]+\/?$/, "GET"],
  [/^(\/api\/v1)?\/health\/?$/, "GET"]
]

const notRouted = (request: HttpServerRequest.HttpServerRequest): ApiError => {
  const path = request.url.split("?")[0]!
  const known = knownPaths.find(([pattern]) => pattern.test(path))
  return known === undefined
    ? apiError(404, "not_found", `no route ${path}`)
    : apiError(405, "method_not_allowed", `${request.method} is not allowed on ${path}; use ${known[1]}`)
}

export const app = HttpRouter.empty.pipe(
  HttpRouter.concat(routes),
  HttpRouter.mount("/api/v1", routes),
  Effect.catchTags({
    RouteNotFound: (e) => Effect.succeed(errorResponse(notRouted(e.request))),
    ApiError: (e) => Effect.succeed(errorResponse(e))
  }),
  Effect.catchAllCause((cause) =>
    Effect.logError("request failed unexpectedly", cause).pipe(
      Effect.as(errorResponse(apiError(500, "internal_error", "the server failed to handle this request")))
    )
  )
)

export const serve: Layer.Layer<never, never, HttpServer.HttpServer | VoteStore> = HttpServer.serve(app).pipe(
  HttpMiddleware.withTracerDisabledWhen(() => true)
)
