import { connect } from "node:net"
import { sleep } from "./wait.js"

/**
 * A raw HTTP/1.1 client over node:net, for what no HTTP client will send: any bytes, in pieces, with pauses, cut
 * off half way. It reads back every response on the connection and parses them strictly (RFC 9112), so a reply
 * that is not valid HTTP/1.1 is reported as such instead of being smoothed over by a lenient parser.
 */

export interface RawResponse {
  readonly status: number
  readonly reason: string
  /** In arrival order, names lower-cased. */
  readonly headers: ReadonlyArray<readonly [string, string]>
  readonly body: Buffer
  /** How the body's end was found: no body, Content-Length, chunked, or the server closing the connection. */
  readonly framing: "none" | "length" | "chunked" | "close"
  /** A response read only in part (a live stream): the client hung up after its first event. */
  readonly partial: boolean
}

/** The header's values joined by ", ", or undefined. */
export const header = (response: RawResponse, name: string): string | undefined => {
  const values = response.headers.filter(([n]) => n === name).map(([, v]) => v)
  return values.length === 0 ? undefined : values.join(", ")
}

export type Step =
  | { readonly _tag: "Write"; readonly bytes: Uint8Array }
  | { readonly _tag: "Pause"; readonly ms: number }
  /** The client closes the connection (FIN, then gone): whatever the server had not answered yet stays unanswered. */
  | { readonly _tag: "HangUp" }

export const write = (bytes: Uint8Array | string): Step => ({
  _tag: "Write",
  bytes: typeof bytes === "string" ? Buffer.from(bytes, "latin1") : bytes
})
export const pause = (ms: number): Step => ({ _tag: "Pause", ms })
export const hangUp: Step = { _tag: "HangUp" }

export interface Plan {
  readonly steps: ReadonlyArray<Step>
  /** The method of each request sent, in order: a response to HEAD has no body whatever its headers say. */
  readonly methods: ReadonlyArray<string>
  /**
   * Responses a correct server sends; once that many are complete the client hangs up. Undefined when it cannot be
   * known (broken framing): then the client reads until the server closes or has been quiet for `quietMs`.
   */
  readonly responses?: number
  readonly quietMs?: number
  /**
   * The server may rightly wait for bytes that never come (a body shorter than its Content-Length): without a
   * response after this long the client hangs up. Undefined: the server must answer within `timeoutMs`.
   */
  readonly patienceMs?: number
  /** After the steps, the longest wait for the answers; past it the exchange ends as timed out. */
  readonly timeoutMs: number
}

export interface Outcome {
  /** The complete responses, in order (interim 1xx responses left out), then a partial live stream if any. */
  readonly responses: ReadonlyArray<RawResponse>
  /**
   * How the connection ended: `server-closed` (FIN or reset from the server), `client` (the client hung up: a
   * HangUp step, all expected responses read, a stream's first event, the server quiet or out of patience), or
   * `timed-out` (nothing more within `timeoutMs`).
   */
  readonly end: "server-closed" | "client" | "timed-out"
  /** Why the client hung up, when it did. */
  readonly clientReason?: "hang-up-step" | "all-read" | "stream" | "quiet" | "patience"
  /** The bytes could not be read as HTTP/1.1 responses: what is wrong, and where. */
  readonly malformed?: string
  /** Bytes after the last complete response that do not form one (yet). */
  readonly leftover: Buffer
  /** The client's own write failed (the server had closed): not an error by itself. */
  readonly writeError?: string
  readonly elapsedMs: number
}

/**
 * The method of a malformed request line that begins with HEAD: whether that is a HEAD request is the server's call,
 * so its answer parses with a body or without one.
 */
export const MAYBE_HEAD = "HEAD?"

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
const STATUS_LINE = /^HTTP\/1\.1 ([1-9][0-9]{2}) ([\t\x20-\x7e\x80-\xff]*)$/
const CRLF = Buffer.from("\r\n")
const HEAD_END = Buffer.from("\r\n\r\n")

type Head = {
  readonly status: number
  readonly reason: string
  readonly headers: Array<readonly [string, string]>
}

type Parsed = {
  readonly responses: Array<RawResponse>
  /** Where the unparsed rest begins. */
  readonly consumed: number
  /** Headers of a response whose body has not ended yet, with the body so far. */
  readonly open?: { readonly head: Head; readonly body: Buffer }
  readonly error?: string
}

const parseHead = (text: string): Head | string => {
  const lines = text.split("\r\n")
  const status = STATUS_LINE.exec(lines[0]!)
  if (status === null) return `bad status line ${JSON.stringify(lines[0]!.slice(0, 200))}`
  const headers: Array<readonly [string, string]> = []
  for (const line of lines.slice(1)) {
    if (/^[ \t]/.test(line)) return `obsolete line folding in ${JSON.stringify(line.slice(0, 200))}`
    const colon = line.indexOf(":")
    const name = colon <= 0 ? "" : line.slice(0, colon)
    if (!TOKEN.test(name)) return `bad header line ${JSON.stringify(line.slice(0, 200))}`
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "")
    if (/[\0\r\n]/.test(value)) return `bad header value in ${JSON.stringify(line.slice(0, 200))}`
    headers.push([name.toLowerCase(), value])
  }
  return { status: Number(status[1]), reason: status[2]!, headers }
}

/** Reads a chunked body starting at `from`: its decoded bytes and where it ends, or that it has not ended yet. */
const parseChunked = (
  buf: Buffer,
  from: number
): { readonly body: Buffer; readonly end?: number; readonly error?: string } => {
  const parts: Array<Buffer> = []
  let at = from
  for (;;) {
    const eol = buf.indexOf(CRLF, at)
    if (eol === -1) return { body: Buffer.concat(parts) }
    const line = buf.subarray(at, eol).toString("latin1")
    const size = /^([0-9A-Fa-f]{1,16})[ \t]*(;.*)?$/.exec(line)
    if (size === null) return { body: Buffer.concat(parts), error: `bad chunk size line ${JSON.stringify(line)}` }
    const n = parseInt(size[1]!, 16)
    if (n === 0) {
      // Trailer fields, then the empty line.
      let t = eol + 2
      for (;;) {
        const end = buf.indexOf(CRLF, t)
        if (end === -1) return { body: Buffer.concat(parts) }
        if (end === t) return { body: Buffer.concat(parts), end: end + 2 }
        t = end + 2
      }
    }
    if (buf.length < eol + 2 + n + 2) {
      parts.push(buf.subarray(eol + 2, Math.min(buf.length, eol + 2 + n)))
      return { body: Buffer.concat(parts) }
    }
    parts.push(buf.subarray(eol + 2, eol + 2 + n))
    if (!buf.subarray(eol + 2 + n, eol + 4 + n).equals(CRLF)) {
      return { body: Buffer.concat(parts), error: "chunk data not followed by CRLF" }
    }
    at = eol + 4 + n
  }
}

/**
 * Parses as many responses as `buf` holds. `closed`: the server has closed, so a body framed by the close ends here,
 * and anything incomplete is an error.
 */
export const parseResponses = (buf: Buffer, methods: ReadonlyArray<string>, closed: boolean): Parsed => {
  const responses: Array<RawResponse> = []
  let at = 0
  let index = 0
  for (;;) {
    if (at >= buf.length) return { responses, consumed: at }
    const headEnd = buf.indexOf(HEAD_END, at)
    if (headEnd === -1) {
      if (closed)
        return { responses, consumed: at, error: "connection closed inside a response's status line or headers" }
      if (buf.length - at > 1 << 20)
        return { responses, consumed: at, error: "over 1 MiB without the end of the headers" }
      return { responses, consumed: at }
    }
    const head = parseHead(buf.subarray(at, headEnd).toString("latin1"))
    if (typeof head === "string") return { responses, consumed: at, error: head }
    const bodyAt = headEnd + 4
    const values = (name: string) => head.headers.filter(([n]) => n === name).map(([, v]) => v)
    // Interim responses (100 Continue) precede the real one and carry no body.
    if (head.status >= 100 && head.status < 200) {
      if (head.status === 101) return { responses, consumed: at, error: "101 Switching Protocols to a plain request" }
      at = bodyAt
      continue
    }
    const method = methods[index] ?? "GET"
    const done = (body: Buffer, framing: RawResponse["framing"], next: number) => {
      responses.push({ status: head.status, reason: head.reason, headers: head.headers, body, framing, partial: false })
      index += 1
      at = next
    }
    if (method === "HEAD" || head.status === 204 || head.status === 304) {
      done(Buffer.alloc(0), "none", bodyAt)
      continue
    }
    if (method === MAYBE_HEAD) {
      const n = Number(values("content-length")[0])
      const length = Number.isInteger(n) && n > 0 ? n : 0
      if (length > 0 && buf.length >= bodyAt + length) {
        done(buf.subarray(bodyAt, bodyAt + length), "length", bodyAt + length)
        continue
      }
      if (buf.length === bodyAt && (closed || length === 0)) {
        done(Buffer.alloc(0), "none", bodyAt)
        continue
      }
      if (!closed) return { responses, consumed: at, open: { head, body: buf.subarray(bodyAt) } }
    }
    const te = values("transfer-encoding")
    const cl = values("content-length")
    if (te.length > 0 && cl.length > 0) {
      return { responses, consumed: at, error: "a response with both Transfer-Encoding and Content-Length" }
    }
    if (te.length > 0) {
      const codings = te
        .join(",")
        .split(",")
        .map((c) => c.trim().toLowerCase())
      if (codings[codings.length - 1] === "chunked") {
        const chunked = parseChunked(buf, bodyAt)
        if (chunked.error !== undefined) return { responses, consumed: at, error: chunked.error }
        if (chunked.end === undefined) {
          if (closed) return { responses, consumed: at, error: "connection closed inside a chunked body" }
          return { responses, consumed: at, open: { head, body: chunked.body } }
        }
        done(chunked.body, "chunked", chunked.end)
        continue
      }
      // Not chunked last: the body runs to the close (RFC 9112 6.3, item 4 for responses).
    } else if (cl.length > 0) {
      const lengths = cl
        .join(",")
        .split(",")
        .map((v) => v.trim())
      if (!lengths.every((v) => /^[0-9]{1,15}$/.test(v)) || new Set(lengths).size !== 1) {
        return { responses, consumed: at, error: `bad Content-Length ${JSON.stringify(cl)}` }
      }
      const n = Number(lengths[0])
      if (buf.length < bodyAt + n) {
        if (closed) {
          return { responses, consumed: at, error: `connection closed after ${buf.length - bodyAt} of ${n} body bytes` }
        }
        return { responses, consumed: at, open: { head, body: buf.subarray(bodyAt) } }
      }
      done(buf.subarray(bodyAt, bodyAt + n), "length", bodyAt + n)
      continue
    }
    if (!closed) return { responses, consumed: at, open: { head, body: buf.subarray(bodyAt) } }
    done(buf.subarray(bodyAt), "close", buf.length)
  }
}

/** Sends the plan's bytes on a fresh connection to 127.0.0.1:`port` and reads back what comes. */
export const exchange = (port: number, plan: Plan): Promise<Outcome> =>
  new Promise((resolve) => {
    const started = Date.now()
    const socket = connect({ port, host: "127.0.0.1", allowHalfOpen: true })
    socket.setNoDelay(true)
    const received: Array<Buffer> = []
    let buffered = Buffer.alloc(0)
    let writeError: string | undefined
    let stepsDone = false
    let finished = false
    let timer: NodeJS.Timeout | undefined
    let quietTimer: NodeJS.Timeout | undefined

    const finish = (end: Outcome["end"], clientReason?: Outcome["clientReason"]) => {
      if (finished) return
      finished = true
      if (timer !== undefined) clearTimeout(timer)
      if (quietTimer !== undefined) clearTimeout(quietTimer)
      socket.destroy()
      const all = Buffer.concat(received)
      const parsed = parseResponses(all, plan.methods, end === "server-closed")
      const responses = [...parsed.responses]
      if (parsed.open !== undefined && end !== "server-closed") {
        const { head, body } = parsed.open
        responses.push({ ...head, body, framing: "chunked", partial: true })
      }
      resolve({
        responses,
        end,
        ...(clientReason === undefined ? {} : { clientReason }),
        ...(parsed.error === undefined ? {} : { malformed: parsed.error }),
        leftover: parsed.open === undefined ? all.subarray(parsed.consumed) : Buffer.alloc(0),
        ...(writeError === undefined ? {} : { writeError }),
        elapsedMs: Date.now() - started
      })
    }

    /** After each arrival: is there anything left to wait for? */
    const check = () => {
      if (finished || !stepsDone) return
      const parsed = parseResponses(buffered, plan.methods, false)
      if (parsed.error !== undefined) return finish("client", "all-read")
      const open = parsed.open
      if (open !== undefined) {
        const type = open.head.headers.find(([n]) => n === "content-type")?.[1] ?? ""
        // A live stream never ends: its headers and first event are all a client needs to see.
        if (
          type.startsWith("text/event-stream") &&
          /(^|\n)event: [^\n]*\ndata: [^\n]*\n\n/.test(open.body.toString("utf8"))
        ) {
          return finish("client", "stream")
        }
        return
      }
      if (plan.responses !== undefined && parsed.responses.length >= plan.responses) return finish("client", "all-read")
      if (plan.responses === undefined && parsed.responses.length > 0) {
        if (quietTimer !== undefined) clearTimeout(quietTimer)
        quietTimer = setTimeout(() => finish("client", "quiet"), plan.quietMs ?? 100)
      }
    }

    socket.on("data", (chunk: Buffer) => {
      received.push(chunk)
      buffered = Buffer.concat([buffered, chunk])
      check()
    })
    socket.on("end", () => finish("server-closed"))
    socket.on("close", () => finish("server-closed"))
    socket.on("error", (e: NodeJS.ErrnoException) => {
      // A reset after the client's own hang-up, or while it was still writing, is the server closing.
      if (e.code === "EPIPE" || e.code === "ECONNRESET") writeError ??= e.code
      finish("server-closed")
    })

    const run = async () => {
      await new Promise<void>((resolveConnect, rejectConnect) => {
        socket.once("connect", resolveConnect)
        socket.once("error", rejectConnect)
      })
      for (const step of plan.steps) {
        if (finished) return
        switch (step._tag) {
          case "Write":
            await new Promise<void>((done) =>
              socket.write(step.bytes, (e) => {
                if (e) writeError ??= e.message
                done()
              })
            )
            break
          case "Pause":
            await sleep(step.ms)
            break
          case "HangUp":
            return finish("client", "hang-up-step")
        }
      }
      stepsDone = true
      timer = setTimeout(() => finish("timed-out"), plan.timeoutMs)
      if (plan.patienceMs !== undefined) {
        setTimeout(() => {
          if (!finished && parseResponses(buffered, plan.methods, false).responses.length === 0) {
            finish("client", "patience")
          }
        }, plan.patienceMs)
      }
      check()
    }
    run().catch(() => finish("server-closed"))
  })
