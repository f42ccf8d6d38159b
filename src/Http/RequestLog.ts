import { Effect } from "effect"
import { randomUUID } from "node:crypto"
import type { IncomingMessage, ServerResponse } from "node:http"

/** W3C trace context: version, trace id, parent id, flags. The trace id names the request. */
const TRACEPARENT = /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/
const ZERO_TRACE = "0".repeat(32)
/** An `X-Request-Id` a client or proxy chose: taken as is when it is short and plain, else a fresh one is made. */
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

/** The request's id: the trace id of a valid `traceparent`, else a plain `X-Request-Id`, else a fresh UUID. */
export const requestIdOf = (req: IncomingMessage): string => {
  const { traceparent, "x-request-id": given } = req.headers
  if (typeof traceparent === "string") {
    const trace = TRACEPARENT.exec(traceparent.trim())?.[1]
    if (trace !== undefined && trace !== ZERO_TRACE) return trace
  }
  if (typeof given === "string" && REQUEST_ID.test(given)) return given
  return randomUUID()
}

/** Paths are logged up to this many characters (a path may be as long as the headers allow). */
const MAX_PATH_CHARS = 200

/**
 * One line when the answer has gone out: method, path, route, status, duration, request id and client. `log` runs
 * the line's Effect (on the app's runtime, so it goes to the app's logger).
 */
export const logWhenDone = (
  req: IncomingMessage,
  res: ServerResponse,
  fields: { readonly route: string; readonly requestId: string; readonly client: string },
  log: (line: Effect.Effect<void>) => void
) => {
  const start = process.hrtime.bigint()
  const line = () =>
    log(
      Effect.logInfo("request").pipe(
        Effect.annotateLogs({
          method: req.method ?? "",
          path: (req.url ?? "").slice(0, MAX_PATH_CHARS),
          route: fields.route,
          status: res.statusCode,
          duration_ms: Number(process.hrtime.bigint() - start) / 1e6,
          request_id: fields.requestId,
          client: fields.client,
          // A connection cut before the answer was complete.
          ...(res.writableFinished ? {} : { aborted: true })
        })
      )
    )
  res.once("close", line)
}
