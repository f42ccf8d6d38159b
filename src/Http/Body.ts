import type { IncomingMessage } from "node:http"
import { PayloadTooLarge } from "./Errors.js"
import { fromError } from "./Reply.js"

export const MAX_BODY_BYTES = 16 * 1024
/** How long an oversized body is read and thrown away before the 413, so the client is not cut off mid-send. */
const DISCARD_MS = 1000

export const TOO_LARGE = fromError(new PayloadTooLarge({ message: `request body is over ${MAX_BODY_BYTES} bytes` }))

/**
 * Reads the body up to `limit` bytes. Past it the rest is read and thrown away for up to DISCARD_MS, so a client
 * still sending gets its 413 instead of a reset connection; then `then` gets undefined (the 413 goes out and the
 * connection closes).
 */
export const readBody = (req: IncomingMessage, limit: number, then: (text: string | undefined) => void) => {
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
