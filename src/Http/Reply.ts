import { STATUS_CODES, type ServerResponse } from "node:http"
import type { Refusal } from "./Errors.js"

/** Messages that quote the request (a path, a schema's complaint) are cut to this many characters. */
const MAX_MESSAGE_CHARS = 300

/** What a request ends in: a status, a JSON body (or a text of another type) and any extra headers. */
export interface Reply {
  readonly status: number
  readonly body: unknown
  readonly headers?: Readonly<Record<string, string>>
  /** A body that is not JSON (CSV, HTML, a script, the metrics' text format), sent as is with its content type. */
  readonly text?: { readonly contentType: string; readonly content: string | Buffer }
}

export const reply = (status: number, body: unknown): Reply => ({ status, body })

/** A reply whose body is `content`, of `contentType`, rather than JSON. */
export const textReply = (
  status: number,
  contentType: string,
  content: string | Buffer,
  headers?: Readonly<Record<string, string>>
): Reply =>
  headers === undefined
    ? { status, body: undefined, text: { contentType, content } }
    : { status, body: undefined, text: { contentType, content }, headers }

const truncate = (text: string) =>
  text.length <= MAX_MESSAGE_CHARS ? text : `${text.slice(0, MAX_MESSAGE_CHARS - 1)}\u2026`

const UNAUTHORIZED_HEADERS = { "www-authenticate": 'Bearer realm="livepoll"' }

/** Any refusal (Domain's or the edge's, see Errors) as its reply: `{"error": code, "message": text}`. */
export const fromError = (e: Refusal): Reply => {
  // A message may quote the request: never more than MAX_MESSAGE_CHARS of it.
  const body = { error: e.code, message: truncate(e.message) }
  // A 401 names the scheme its credentials go in.
  const headers = e.status === 401 ? { ...UNAUTHORIZED_HEADERS, ...e.headers } : e.headers
  return headers === undefined ? { status: e.status, body } : { status: e.status, body, headers }
}

/** A refusal as a complete answer written straight to a socket, before node:http has a response object for it. */
export const rawAnswer = (e: Refusal): string => {
  const r = fromError(e)
  const body = JSON.stringify(r.body)
  const headers = { ...r.headers, connection: "close" }
  let head = `HTTP/1.1 ${r.status} ${STATUS_CODES[r.status]}\r\ncontent-type: application/json\r\n`
  head += `content-length: ${Buffer.byteLength(body)}\r\n`
  for (const [name, value] of Object.entries(headers)) head += `${name}: ${value}\r\n`
  return `${head}\r\n${body}`
}

/**
 * Headers every answer of one request carries besides its reply's own (its request id, its rate limits), kept on the
 * response until the answer is written. They go out in the one `writeHead` with the rest: a `setHeader` beforehand
 * would put every answer on node:http's slower path of merging headers set earlier (about 5 µs a request here).
 */
export const EXTRA_HEADERS = Symbol("livepoll.extraHeaders")
export interface WithExtraHeaders extends ServerResponse {
  [EXTRA_HEADERS]?: Record<string, string>
}

/** The headers the handler keeps for this response's answer (see EXTRA_HEADERS), made on first use. */
export const extraHeaders = (res: ServerResponse): Record<string, string> =>
  ((res as WithExtraHeaders)[EXTRA_HEADERS] ??= {})

/** Writes a reply, unless an answer has begun already or the connection is gone (or answered by the listener). */
export const send = (res: ServerResponse, r: Reply) => {
  if (res.headersSent || res.destroyed || res.socket?.writableEnded === true) return
  const contentType = r.text === undefined ? "application/json" : r.text.contentType
  const content = r.text === undefined ? JSON.stringify(r.body) : r.text.content
  res.writeHead(r.status, {
    "content-type": contentType,
    "content-length": Buffer.byteLength(content),
    ...(res as WithExtraHeaders)[EXTRA_HEADERS],
    ...r.headers
  })
  res.end(content)
}
