/**
 * The ceiling of a Node process on this machine: plain node:http doing what the app does for the benchmarked routes
 * (route, read and parse the JSON body, check the ids, refuse a voter's second vote, count in memory, answer JSON),
 * and nothing else.
 *
 * With BARE_FIBER=1, the same server runs each request's work (once its body is read) in an Effect fiber of its own,
 * forked on the default runtime as the app forks each request on its own: the cost of one fiber per request, alone.
 */
import { Effect, Runtime } from "effect"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"

const runFork = Runtime.runFork(Runtime.defaultRuntime)
const inFiber = (work: () => void) => void runFork(Effect.sync(work))
const run = process.env.BARE_FIBER === "1" ? inFiber : (work: () => void) => work()

const ID = /^[A-Za-z0-9_.-]{1,64}$/
const MAX_OPTIONS = 256
const MAX_BODY = 16 * 1024
const counts = new Map<string, Map<string, number>>()
const voters = new Map<string, Set<string>>()

const send = (res: ServerResponse, status: number, body: unknown) => {
  const json = JSON.stringify(body)
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(json) })
  res.end(json)
}

const vote = (res: ServerResponse, pollId: string, text: string) => {
  let body: unknown
  try {
    body = JSON.parse(text)
  } catch {
    return send(res, 400, { error: "invalid_json", message: "request body is not valid JSON" })
  }
  const fields = typeof body === "object" && body !== null ? (body as { option_id?: unknown; voter_id?: unknown }) : {}
  const option = fields.option_id
  if (typeof option !== "string" || !ID.test(option)) {
    return send(res, 400, { error: "invalid_request", message: "option_id is missing or invalid" })
  }
  const voter = fields.voter_id
  if (voter !== undefined) {
    if (typeof voter !== "string" || voter.length === 0 || voter.length > 128) {
      return send(res, 400, { error: "invalid_request", message: "voter_id is invalid" })
    }
    let seen = voters.get(pollId)
    if (seen === undefined) voters.set(pollId, (seen = new Set()))
    if (seen.has(voter)) return send(res, 409, { error: "already_voted", message: "this voter has voted already" })
    seen.add(voter)
  }
  let poll = counts.get(pollId)
  if (poll === undefined) counts.set(pollId, (poll = new Map()))
  const current = poll.get(option)
  if (current === undefined && poll.size >= MAX_OPTIONS) {
    return send(res, 422, { error: "too_many_options", message: `poll ${pollId} has ${MAX_OPTIONS} options` })
  }
  poll.set(option, (current ?? 0) + 1)
  send(res, 200, { poll_id: pollId, option_id: option })
}

const handler = (req: IncomingMessage, res: ServerResponse) => {
  const url = req.url ?? "/"
  const path = url.startsWith("/api/v1/") ? url.slice(7) : url
  if (path === "/") return send(res, 200, { status: "healthy" })
  const [, action, pollId, extra] = path.split("/")
  if (extra !== undefined || pollId === undefined || !ID.test(pollId)) {
    return send(res, 404, { error: "not_found", message: `no route ${url}` })
  }
  if (action === "results" && req.method === "GET") {
    const poll = counts.get(pollId)
    return run(() =>
      send(res, 200, { poll_id: pollId, results: poll ? Object.fromEntries(poll) : {}, served_via: "in_memory" })
    )
  }
  if (action === "vote" && req.method === "POST") {
    const chunks: Array<Buffer> = []
    let size = 0
    req.on("data", (chunk: Buffer) => {
      size += chunk.length
      if (size <= MAX_BODY) chunks.push(chunk)
    })
    req.on("end", () =>
      size > MAX_BODY
        ? send(res, 413, { error: "payload_too_large", message: "request body is too large" })
        : run(() => vote(res, pollId, Buffer.concat(chunks).toString("utf8")))
    )
    return
  }
  send(res, 404, { error: "not_found", message: `no route ${url}` })
}

const server = createServer({ keepAliveTimeout: 5000 }, handler)
server.listen(Number(process.env.PORT ?? 0), process.env.HOST ?? "127.0.0.1")
const stop = () => {
  server.close(() => process.exit(0))
  server.closeAllConnections()
}
process.once("SIGTERM", stop)
process.once("SIGINT", stop)
