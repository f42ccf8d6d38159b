import { Effect, Layer, Runtime } from "effect"
import { readFileSync } from "node:fs"
import { createServer, type IncomingMessage, maxHeaderSize, type ServerResponse } from "node:http"
import type { Socket } from "node:net"
import { effectiveLimits, parseOpenFileLimit, type RateLimits } from "../Config.js"
import { RateLimiter } from "../RateLimit.js"
import {
  BadRequest,
  ExpectationFailed,
  HeadersTooLarge,
  PayloadTooLarge,
  RequestTimeout,
  TooManyConnections
} from "./Errors.js"
import { makeHandler, type Services } from "./Handler.js"
import { fromError, rawAnswer, send } from "./Reply.js"

/**
 * A connection answered by the listener itself (over the cap, a malformed request) is closed on our side at once but
 * read for up to this long, so the client's unread bytes do not turn our close into a reset that loses the answer.
 */
const LINGER_MS = 1000

export interface ServerOptions {
  readonly port: number
  readonly host: string
  /** Open connections at once (lowered to fit the open-file limit, see Config's effectiveLimits). */
  readonly maxConnections: number
  /** Live result streams at once (lowered to leave connections to other requests). */
  readonly maxStreams: number
  /** A poll's stream re-reads its results at most this often. */
  readonly streamUpdateIntervalMs?: number
  /** Every stream gets a keep-alive comment this often. */
  readonly streamHeartbeatMs?: number
  /** A request's headers must be in within this, counted from its first byte (or from connecting). */
  readonly headersTimeoutMs: number
  /** A request, headers and body, must be in within this: a body shorter than its Content-Length is cut here. */
  readonly requestTimeoutMs: number
  /** An idle keep-alive connection is closed after this. */
  readonly keepAliveTimeoutMs: number
  /** How long shutdown waits for open connections before cutting them. */
  readonly drainMs?: number
  /** Per-client limits, kept by the RateLimiter service; undefined: off. */
  readonly rateLimits?: RateLimits | undefined
  /** Proxies in front that append to `X-Forwarded-For`. */
  readonly trustProxy?: number
  /** The share of hot-path requests with an access log line. */
  readonly accessLogSample?: number
}

/** What a request node:http refused itself (it calls them client errors) is answered. */
const clientErrorAnswer = (error: NodeJS.ErrnoException & { readonly reason?: string }, options: ServerOptions) => {
  switch (error.code) {
    case "HPE_HEADER_OVERFLOW":
      return rawAnswer(new HeadersTooLarge({ limit: maxHeaderSize }))
    case "HPE_CHUNK_EXTENSIONS_OVERFLOW":
      return rawAnswer(new PayloadTooLarge({ message: "the request's chunk extensions are too large" }))
    case "ERR_HTTP_REQUEST_TIMEOUT":
      return rawAnswer(
        new RequestTimeout({ headersTimeoutMs: options.headersTimeoutMs, requestTimeoutMs: options.requestTimeoutMs })
      )
    default:
      return rawAnswer(
        new BadRequest({ message: `the request is not valid HTTP/1.1${error.reason ? `: ${error.reason}` : ""}` })
      )
  }
}

const EXPECTATION_FAILED = fromError(new ExpectationFailed())
const CONNECT_REFUSED = rawAnswer(new BadRequest({ message: "CONNECT is not supported" }))

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
export const layer = (options: ServerOptions): Layer.Layer<never, Error, Services | RateLimiter> =>
  Layer.scopedDiscard(
    Effect.gen(function* () {
      const fileLimit = openFileLimit()
      const limits = effectiveLimits(options, fileLimit)
      const answered = new WeakSet<Socket>()
      const runtime = yield* Effect.runtime<Services>()
      const runFork = Runtime.runFork(runtime)
      const limiter = yield* RateLimiter
      const { handler, hub } = makeHandler(runtime, {
        maxStreams: limits.streams,
        streamUpdateIntervalMs: options.streamUpdateIntervalMs,
        streamHeartbeatMs: options.streamHeartbeatMs,
        answered,
        rateLimits: options.rateLimits && { limits: options.rateLimits, limiter },
        trustProxy: options.trustProxy,
        accessLogSample: options.accessLogSample
      })
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
      server.on("checkExpectation", (_req: IncomingMessage, res: ServerResponse) => send(res, EXPECTATION_FAILED))

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
      const TOO_MANY_CONNECTIONS = rawAnswer(new TooManyConnections({ limit: limits.connections }))
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
        closeWith(socket, CONNECT_REFUSED)
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
