import { type ChildProcess, spawn } from "node:child_process"
import { request as httpRequest } from "node:http"
import { connect, type Socket } from "node:net"
import { createInterface } from "node:readline"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Config from "../src/Config.js"
import { type App, killAllApps, startApp } from "./support/app.js"
import { eventually, sleep } from "./support/wait.js"
import { exchange, header, type Outcome, pause, type RawResponse, type Step, write } from "./support/raw.js"
import { freePort, type RedisServer, startRedis } from "./support/redis.js"

/**
 * The edge of a real process: what node:http refuses itself, the bounds on what a client can make the server hold
 * (connections, streams, slow requests), input that would make the app recurse, HEAD, and a results event larger
 * than a socket's buffer.
 */

/** Defaults throughout. */
let plain: App
/** Small request deadlines, so a slow client is cut within a test. */
let tight: App
const HEADERS_TIMEOUT_MS = 800
const REQUEST_TIMEOUT_MS = 1200
/** Ten connections at most (so nine streams); idle keep-alive connections close quickly, so the tests know the count. */
let capped: App
const MAX_CONNECTIONS = 10
const KEEP_ALIVE_TIMEOUT_MS = 200
let redis: RedisServer
let redisApp: App

beforeAll(async () => {
  redis = await startRedis()
  ;[plain, tight, capped, redisApp] = await Promise.all([
    startApp({ env: { POLL_STAGE: "memory" } }),
    startApp({
      env: {
        POLL_STAGE: "memory",
        HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS),
        REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS)
      }
    }),
    startApp({
      env: {
        POLL_STAGE: "memory",
        MAX_CONNECTIONS: String(MAX_CONNECTIONS),
        KEEP_ALIVE_TIMEOUT_MS: String(KEEP_ALIVE_TIMEOUT_MS)
      }
    }),
    startApp({ env: { POLL_STAGE: "redis", REDIS_URL: redis.url } })
  ])
}, 90_000)

afterAll(async () => {
  await killAllApps()
  await redis?.stop()
})

const json = (body: unknown) => JSON.stringify(body)

const request = (method: string, path: string, options: { body?: string; headers?: string } = {}) => {
  const body = options.body ?? ""
  const length = options.body === undefined ? "" : `content-length: ${Buffer.byteLength(body)}\r\n`
  return `${method} ${path} HTTP/1.1\r\nhost: livepoll\r\n${length}${options.headers ?? ""}\r\n${body}`
}

/** One connection: `bytes`, then the responses read back (strictly parsed) until `responses` are in or it closes. */
const ask = (
  app: App,
  bytes: string | Uint8Array,
  options: { methods?: ReadonlyArray<string>; responses?: number; timeoutMs?: number } = {}
): Promise<Outcome> =>
  exchange(app.port, {
    steps: [write(bytes)],
    methods: options.methods ?? ["GET"],
    responses: options.responses ?? 1,
    timeoutMs: options.timeoutMs ?? 5000
  })

const only = (outcome: Outcome): RawResponse => {
  expect(outcome.malformed).toBeUndefined()
  expect(outcome.responses).toHaveLength(1)
  return outcome.responses[0]!
}

/** A complete JSON error: the status, the code, a message, and a Content-Length that frames the body. */
const expectJsonError = (response: RawResponse, status: number, error: string) => {
  expect({ status: response.status, contentType: header(response, "content-type") }).toEqual({
    status,
    contentType: expect.stringContaining("application/json")
  })
  expect(header(response, "content-length")).toBe(String(response.body.length))
  const parsed = JSON.parse(response.body.toString("utf8"))
  expect(parsed).toEqual({ error, message: expect.any(String) })
  expect(parsed.message.length).toBeGreaterThan(0)
  return parsed as { error: string; message: string }
}

const expectUp = async (app: App) => {
  const outcome = await Promise.race([app.exited.then(() => "exited"), sleep(50).then(() => "running")])
  expect(outcome).toBe("running")
  expect((await app.request("GET", "/")).json).toEqual({ status: "healthy" })
}

/** A connection that says nothing: it holds a place on the server until one side closes it. */
const openIdle = (port: number): Promise<Socket> =>
  new Promise((resolve, reject) => {
    const socket = connect({ port, host: "127.0.0.1" })
    socket.once("connect", () => resolve(socket))
    socket.once("error", reject)
  })

/** A live stream held open on its own connection, resolved once its first results event is in. */
const holdStream = (port: number, pollId: string): Promise<Socket> =>
  new Promise((resolve, reject) => {
    const socket = connect({ port, host: "127.0.0.1" })
    let text = ""
    socket.setEncoding("utf8")
    socket.on("data", (chunk: string) => {
      text += chunk
      if (text.includes("event: results")) resolve(socket)
      else if (/^HTTP\/1\.1 (?!200)/.test(text)) reject(new Error(`stream refused: ${text}`))
    })
    socket.once("error", reject)
    socket.write(request("GET", `/api/v1/polls/${pollId}/stream`))
  })

const nested = (depth: number, inner = "") => "[".repeat(depth) + inner + "]".repeat(depth)

describe("JSON that nests deeply", () => {
  // 8,000 levels fit in the 16 KiB body limit and overflowed the stack while the 400 was being written.
  const DEEP = 8000

  it.each([
    ["as option_id", `{"option_id":${nested(DEEP)}}`],
    ["as the whole body", nested(DEEP)],
    // Objects take more bytes a level: 4,000 levels, alternating, in 16 KB.
    ["as objects and arrays", '{"a":['.repeat(DEEP / 4) + "1" + "]}".repeat(DEEP / 4)],
    ["beside a valid option_id", `{"option_id":"A","x":${nested(DEEP)}}`]
  ])("a vote body nested thousands deep (%s) is a JSON 400 and the process stays up", async (_, body) => {
    expect(Buffer.byteLength(body)).toBeLessThanOrEqual(16 * 1024)
    const response = only(await ask(plain, request("POST", "/api/v1/vote/e-deep", { body }), { methods: ["POST"] }))
    expect(expectJsonError(response, 400, "invalid_json").message).toContain("64")
    await expectUp(plain)
  })

  it("a poll body nested 8,000 deep is a JSON 400 and the process stays up", async () => {
    const body = `{"question":${nested(DEEP)},"options":[{"id":"a","label":"A"},{"id":"b","label":"B"}]}`
    const response = only(await ask(plain, request("POST", "/api/v1/polls", { body }), { methods: ["POST"] }))
    expectJsonError(response, 400, "invalid_json")
    expect((await plain.results("e-deep")).json.results).toEqual({})
    await expectUp(plain)
  })

  it("bodies nested 100,000 deep are over the size limit: a JSON 413 for a vote and a poll", async () => {
    for (const path of ["/api/v1/vote/e-deeper", "/api/v1/polls"]) {
      const reply = await plain.request("POST", path, `{"option_id":${nested(100_000)}}`)
      expect({ status: reply.status, error: reply.json?.error }).toEqual({ status: 413, error: "payload_too_large" })
    }
    await expectUp(plain)
  })

  it("nesting up to 64 levels is read; 65 is refused", async () => {
    const at = await plain.request("POST", "/api/v1/vote/e-depth", `{"option_id":"A","x":${nested(63)}}`)
    expect(at.status).toBe(200)
    const over = await plain.request("POST", "/api/v1/vote/e-depth", `{"option_id":"A","x":${nested(64)}}`)
    expect({ status: over.status, error: over.json?.error }).toEqual({ status: 400, error: "invalid_json" })
    // Brackets inside strings are text, not nesting.
    const quoted = await plain.request("POST", "/api/v1/vote/e-depth", json({ option_id: "A", x: "[".repeat(200) }))
    expect(quoted.status).toBe(200)
    expect((await plain.results("e-depth")).json.results).toEqual({ A: 2 })
  })

  it("a message that quotes the request is bounded", async () => {
    const options = Array.from({ length: 200 }, (_, i) => ({ id: `bad id ${i}!`, label: "" }))
    const poll = await plain.request("POST", "/api/v1/polls", json({ question: "", options }))
    expect(poll.status).toBe(400)
    const pollId = await plain.request("GET", `/api/v1/results/${"~".repeat(10_000)}`)
    expect(pollId.status).toBe(400)
    const path = await plain.request("GET", `/${"x".repeat(10_000)}`)
    expect(path.status).toBe(404)
    const method = await plain.request("PUT", `/api/v1/results/${"y".repeat(10_000)}`)
    expect(method.status).toBe(405)
    for (const reply of [poll, pollId, path, method]) {
      expect(reply.json.message.length).toBeGreaterThan(0)
      expect(reply.json.message.length).toBeLessThanOrEqual(300)
    }
  })
})

describe("ids in the path", () => {
  it.each(["%ZZ", "%", "%E2%82", "%ED%A0%80", "%C3%28", "%F0%9F%8D%95", "%00"])(
    "a poll id escaped as %s is a JSON 400 on every id route",
    async (escaped) => {
      for (const [method, path] of [
        ["POST", `/api/v1/vote/p${escaped}`],
        ["GET", `/api/v1/results/p${escaped}`],
        ["GET", `/api/v1/polls/p${escaped}`],
        ["GET", `/polls/p${escaped}`],
        ["GET", `/api/v1/polls/p${escaped}/stream`]
      ] as const) {
        const body = method === "POST" ? json({ option_id: "A" }) : undefined
        const response = only(
          await ask(plain, request(method, path, body === undefined ? {} : { body }), { methods: [method] })
        )
        expectJsonError(response, 400, "invalid_poll_id")
      }
      await expectUp(plain)
    }
  )
})

describe("text that no store can keep", () => {
  const draft = (question: string, labels: [string, string]) =>
    json({
      question,
      options: [
        { id: "a", label: labels[0] },
        { id: "b", label: labels[1] }
      ]
    })
  const organiser = (created: { json: any }) => ({ authorization: `Bearer ${created.json.organiser_key}` })

  it.each([
    ["a question", draft("Lunch\ud800?", ["A", "B"])],
    ["a label", draft("Lunch?", ["A", "B\udfff"])],
    ["a low surrogate before its high half", draft("\udc00\ud83d", ["A", "B"])]
  ])("a lone surrogate in %s is a 400 invalid_poll", async (_, body) => {
    expect(body).toMatch(/\\ud[89a-f][0-9a-f]{2}/)
    for (const app of [plain, redisApp]) {
      const reply = await app.request("POST", "/api/v1/polls", body)
      expect({ status: reply.status, error: reply.json?.error }).toEqual({ status: 400, error: "invalid_poll" })
      expect(reply.json.message).toMatch(/surrogate/)
    }
  })

  it("emoji (surrogate pairs) are kept, and such a poll closes on Redis", async () => {
    const id = `e-emoji-${process.pid}`
    const created = await redisApp.request(
      "POST",
      "/api/v1/polls",
      json({ ...JSON.parse(draft("🍕 or 🍣?", ["🍕", "🍣"])), id })
    )
    expect(created.status).toBe(201)
    expect(created.json.question).toBe("🍕 or 🍣?")
    const closed = await redisApp.request("POST", `/api/v1/polls/${id}/close`, undefined, organiser(created))
    expect(closed.status).toBe(200)
    expect(closed.json).toMatchObject({ question: "🍕 or 🍣?", options: [{ label: "🍕" }, { label: "🍣" }] })
  })
})

describe("requests node:http refuses itself", () => {
  it.each([
    [
      "headers over 16 KiB",
      request("GET", "/", { headers: `x-big: ${"a".repeat(20_000)}\r\n` }),
      431,
      "headers_too_large"
    ],
    ["a malformed request line", "GARBAGE\r\n\r\n", 400, "bad_request"],
    ["an unknown method", request("FROB", "/"), 400, "bad_request"],
    ["a space inside the target", "GET /a b HTTP/1.1\r\nhost: x\r\n\r\n", 400, "bad_request"],
    [
      "both Content-Length and Transfer-Encoding",
      "POST /api/v1/vote/e-clte HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
      400,
      "bad_request"
    ],
    ["CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n", 400, "bad_request"]
  ])("%s: a complete JSON error, then the connection closes", async (_, bytes, status, error) => {
    const outcome = await ask(plain, bytes)
    const response = only(outcome)
    expectJsonError(response, status, error)
    expect(header(response, "connection")).toBe("close")
    await expectUp(plain)
  })

  it("a malformed chunked vote body is answered once, in JSON, and counts nothing", async () => {
    const bytes = "POST /api/v1/vote/e-chunk HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"
    const outcome = await exchange(plain.port, {
      steps: [write(bytes)],
      methods: ["POST"],
      quietMs: 300,
      timeoutMs: 5000
    })
    expectJsonError(only(outcome), 400, "bad_request")
    expect(outcome.leftover.length).toBe(0)
    expect((await plain.results("e-chunk")).json.results).toEqual({})
  })

  it("after a good answer on a keep-alive connection, a malformed request still gets a JSON error", async () => {
    const outcome = await ask(plain, request("GET", "/") + "GARBAGE\r\n\r\n", { methods: ["GET", "GET"], responses: 2 })
    expect(outcome.malformed).toBeUndefined()
    expect(outcome.responses.map((r) => r.status)).toEqual([200, 400])
    expectJsonError(outcome.responses[1]!, 400, "bad_request")
  })
})

describe("HEAD", () => {
  const id = `e-head-${process.pid}`
  beforeAll(async () => {
    const created = await plain.request(
      "POST",
      "/api/v1/polls",
      json({
        id,
        question: "Head?",
        options: [
          { id: "a", label: "A" },
          { id: "b", label: "B" }
        ]
      })
    )
    expect(created.status).toBe(201)
    expect((await plain.vote(id, "a")).status).toBe(200)
  })

  // Date and a fresh voter cookie differ from answer to answer; every other header must be the same.
  const comparable = (response: RawResponse) =>
    response.headers
      .filter(([name]) => name !== "date")
      .map(([name, value]) => [name, name === "set-cookie" || name === "x-request-id" ? "" : value])

  it.each([
    ["/", ""],
    ["/health", ""],
    ["/api/v1/health", ""],
    ["/api/v1/results/ID", ""],
    ["/results/ID", ""],
    ["/api/v1/polls/ID", ""],
    ["/polls/ID", "accept: text/html\r\n"],
    ["/api/v1/polls/e-head-never-defined", ""],
    ["/api/v1/results/bad~id", ""],
    ["/nowhere", ""]
  ])("HEAD %s answers as GET does, without the body", async (template, headers) => {
    const path = template.replace("ID", id)
    const get = only(await ask(plain, request("GET", path, { headers })))
    const head = only(await ask(plain, request("HEAD", path, { headers }), { methods: ["HEAD"] }))
    expect(head.status).toBe(get.status)
    expect(comparable(head)).toEqual(comparable(get))
    expect(header(head, "content-length")).toBe(String(get.body.length))
    expect(get.body.length).toBeGreaterThan(0)
    // Strictly read: a HEAD answer has no body whatever its headers say, so any bytes here would be a stray response.
    const next = await ask(plain, request("HEAD", path, { headers }) + request("GET", "/"), {
      methods: ["HEAD", "GET"],
      responses: 2
    })
    expect(next.malformed).toBeUndefined()
    expect(next.responses.map((r) => r.status)).toEqual([get.status, 200])
  })

  it("HEAD on a stream route answers the stream's headers and ends; the connection serves the next request", async () => {
    const outcome = await ask(plain, request("HEAD", `/api/v1/polls/${id}/stream`) + request("GET", "/"), {
      methods: ["HEAD", "GET"],
      responses: 2
    })
    expect(outcome.malformed).toBeUndefined()
    const [head, next] = outcome.responses
    expect(head!.status).toBe(200)
    expect(header(head!, "content-type")).toMatch(/^text\/event-stream/)
    expect(next!.status).toBe(200)
  })

  it("GET routes allow GET and HEAD; POST routes still refuse HEAD", async () => {
    const put = only(await ask(plain, request("PUT", `/api/v1/results/${id}`, { body: "" }), { methods: ["PUT"] }))
    expectJsonError(put, 405, "method_not_allowed")
    expect(header(put, "allow")).toBe("GET, HEAD")
    const head = only(await ask(plain, request("HEAD", `/api/v1/vote/${id}`), { methods: ["HEAD"] }))
    expect(head.status).toBe(405)
    expect(header(head, "allow")).toBe("POST")
    expect((await plain.results(id)).json.results).toEqual({ a: 1, b: 0 })
  })
})

describe("slow clients", () => {
  it("a body shorter than its Content-Length is cut with a JSON 408 at REQUEST_TIMEOUT_MS, and counts nothing", async () => {
    const bytes = "POST /api/v1/vote/e-short HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n" + '{"option_id"'
    const outcome = await ask(tight, bytes, { methods: ["POST"], timeoutMs: 10_000 })
    const response = only(outcome)
    expectJsonError(response, 408, "request_timeout")
    expect(header(response, "connection")).toBe("close")
    expect(outcome.elapsedMs).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 100)
    expect(outcome.elapsedMs).toBeLessThan(REQUEST_TIMEOUT_MS + 2000)
    expect((await tight.results("e-short")).json.results).toEqual({})
  })

  it("headers sent a byte at a time are cut with a JSON 408 at HEADERS_TIMEOUT_MS", async () => {
    const steps: Array<Step> = [write("GET / HTTP/1.1\r\nhost: x\r\nx-slow: ")]
    for (let i = 0; i < 40; i++) steps.push(pause(100), write("a"))
    const outcome = await exchange(tight.port, { steps, methods: ["GET"], responses: 1, timeoutMs: 10_000 })
    const response = only(outcome)
    expectJsonError(response, 408, "request_timeout")
    expect(outcome.end).toBe("server-closed")
    expect(outcome.elapsedMs).toBeLessThan(HEADERS_TIMEOUT_MS + 2000)
  })

  it("a connection that never says anything is closed with a JSON 408", async () => {
    const outcome = await exchange(tight.port, { steps: [], methods: ["GET"], responses: 1, timeoutMs: 10_000 })
    expectJsonError(only(outcome), 408, "request_timeout")
    expect(outcome.elapsedMs).toBeLessThan(HEADERS_TIMEOUT_MS + 2000)
    await expectUp(tight)
  })
})

describe("connection and stream caps", () => {
  /** Until the server has closed every idle keep-alive connection the test runner's fetch left behind. */
  const quiet = () => sleep(KEEP_ALIVE_TIMEOUT_MS * 3)

  it("logs the caps it enforces at start", () => {
    expect(capped.output()).toMatch(/listening on \S+ max_connections=10 max_streams=9 /)
  })

  it("a connection over MAX_CONNECTIONS gets a JSON 503 and is closed; once others close, new ones are served", async () => {
    await quiet()
    const held = await Promise.all(Array.from({ length: MAX_CONNECTIONS }, () => openIdle(capped.port)))
    try {
      const outcome = await ask(capped, request("GET", "/"))
      const response = only(outcome)
      expectJsonError(response, 503, "too_many_connections")
      expect(header(response, "connection")).toBe("close")
      expect(outcome.writeError).toBeUndefined()
    } finally {
      held.forEach((s) => s.destroy())
    }
    await eventually(async () => ((await capped.request("GET", "/")).status === 200 ? true : undefined), {
      what: "a connection served again"
    })
  })

  it("with every stream slot taken a vote still gets in, on the connection the streams leave free", async () => {
    await quiet()
    const poll = `e-streams-${process.pid}`
    const streams: Array<Socket> = []
    try {
      // MAX_STREAMS is lowered to 9 so that one of the 10 connections is left to other requests.
      for (let i = 0; i < MAX_CONNECTIONS - 1; i++) streams.push(await holdStream(capped.port, poll))
      const vote = request("POST", `/api/v1/vote/${poll}`, { body: json({ option_id: "A" }) })
      const last = await ask(capped, request("GET", `/api/v1/polls/${poll}/stream`) + vote, {
        methods: ["GET", "POST"],
        responses: 2
      })
      expect(last.malformed).toBeUndefined()
      expectJsonError(last.responses[0]!, 503, "too_many_streams")
      expect(last.responses[1]!.status).toBe(200)
    } finally {
      streams.forEach((s) => s.destroy())
    }
    await eventually(async () => {
      const reply = await capped.results(poll)
      return reply.status === 200 ? reply : undefined
    }).then((reply) => expect(reply.json.results).toEqual({ A: 1 }))
  })

  it("the connection cap stays below the process's open-file limit, and the stream cap below that", async () => {
    const port = await freePort()
    const env: NodeJS.ProcessEnv = { ...process.env }
    for (const name of Config.VARIABLES) delete env[name]
    const child: ChildProcess = spawn(
      "sh",
      ["-c", 'ulimit -n 200 && exec "$0" --import tsx src/main.ts', process.execPath],
      { env: { ...env, HOST: "127.0.0.1", PORT: String(port) }, stdio: ["ignore", "pipe", "pipe"], detached: true }
    )
    try {
      const line = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("no listening line within 20 s")), 20_000)
        for (const stream of [child.stdout!, child.stderr!]) {
          createInterface({ input: stream }).on("line", (l) => {
            if (!l.includes("listening on")) return
            clearTimeout(timer)
            resolve(l)
          })
        }
      })
      // 200 files: a quarter (50) kept for Redis, the journal, stdio and refusals; a tenth of the rest for requests.
      expect(line).toMatch(/max_connections=150 max_streams=135 open_file_limit=200/)
      const status = await new Promise<number>((resolve, reject) =>
        httpRequest({ host: "127.0.0.1", port, path: "/", agent: false }, (res) => {
          res.resume()
          resolve(res.statusCode ?? 0)
        })
          .on("error", reject)
          .end()
      )
      expect(status).toBe(200)
    } finally {
      try {
        process.kill(-child.pid!, "SIGKILL")
      } catch {
        // already gone
      }
    }
  })
})

describe("a results event larger than the socket buffer", () => {
  it("is sent once, not again on every drain", async () => {
    const poll = `e-flood-${process.pid}`
    // 256 options of 64 characters: one event of about 18 KB, over the 16 KiB a socket write buffers before it
    // reports back-pressure.
    const options = Array.from({ length: 256 }, (_, i) => String(i).padStart(3, "0").padEnd(64, "o"))
    for (let i = 0; i < options.length; i += 32) {
      const replies = await Promise.all(options.slice(i, i + 32).map((o) => plain.vote(poll, o)))
      expect(replies.every((r) => r.status === 200)).toBe(true)
    }
    const { events, bytes } = await new Promise<{ events: number; bytes: number }>((resolve, reject) => {
      let text = ""
      let total = 0
      let firstAt: number | undefined
      const req = httpRequest(
        { host: "127.0.0.1", port: plain.port, path: `/api/v1/polls/${poll}/stream`, agent: false },
        (res) => {
          res.setEncoding("utf8")
          res.on("data", (chunk: string) => {
            total += Buffer.byteLength(chunk)
            // Counting stops at a few MB: the flood is megabytes a second and must not stall the test runner.
            if (total < 4_000_000) text += chunk
            if (firstAt === undefined && text.includes("event: results")) {
              firstAt = Date.now()
              setTimeout(() => {
                req.destroy()
                resolve({ events: text.split("event: results").length - 1, bytes: total })
              }, 1000)
            }
          })
        }
      )
      req.on("error", (e) => (firstAt === undefined ? reject(e) : undefined))
      req.end()
    })
    expect(events).toBe(1)
    expect(bytes).toBeLessThan(40_000)
    await expectUp(plain)
  })
})
