import { type ChildProcess, spawn } from "node:child_process"
import { request as httpRequest } from "node:http"
import { createInterface } from "node:readline"
import { freePort } from "./redis.js"
import { sleep } from "./wait.js"
import * as Config from "../../src/Config.js"

/** The variables the app reads; a test states each one it needs and never inherits them from the shell. */
const APP_VARIABLES = Config.VARIABLES

export interface AppOptions {
  /** Extra environment on top of the PORT chosen here, e.g. POLL_STAGE, REDIS_URL, CACHE_TTL_MS. */
  readonly env?: Readonly<Record<string, string>>
  /** Run the compiled `dist/main.js` with node instead of `src/main.ts` with tsx. */
  readonly built?: boolean
  readonly port?: number
  /**
   * What counts as started: `live` once `GET /` answers; `healthy` (the default) once `/api/v1/health` is 200 as well,
   * i.e. every store node is connected. The listener opens before the first Redis connection is ready.
   */
  readonly ready?: "live" | "healthy"
  /** How long to wait for the app to be ready. */
  readonly readyTimeoutMs?: number
}

export interface Reply {
  readonly status: number
  readonly headers: Headers
  readonly text: string
  /** The body parsed as JSON, or undefined when it is not JSON. */
  readonly json: any
}

export interface Exit {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

export interface App {
  readonly port: number
  readonly baseUrl: string
  readonly pid: number
  /** stdout and stderr, line by line, in arrival order. */
  readonly lines: ReadonlyArray<string>
  readonly output: () => string
  /** Resolves with the first line at or after `from` that matches; rejects after `timeoutMs`. */
  readonly waitForLine: (pattern: RegExp, options?: { from?: number; timeoutMs?: number }) => Promise<string>
  readonly exited: Promise<Exit>
  readonly request: (
    method: string,
    path: string,
    body?: string | Uint8Array | ReadableStream<Uint8Array>,
    headers?: Record<string, string>
  ) => Promise<Reply>
  readonly vote: (pollId: string, optionId: string) => Promise<Reply>
  readonly results: (pollId: string) => Promise<Reply>
  /** Sends `signal` to the app and resolves with its exit code once it has exited. */
  readonly stop: (signal?: NodeJS.Signals, timeoutMs?: number) => Promise<number | null>
  /** SIGKILL to the app's whole process group. */
  readonly kill: () => Promise<void>
}

const running = new Set<App>()

// A worker that dies before its afterAll still takes its app processes with it.
process.once("exit", () => {
  for (const app of running) {
    try {
      process.kill(-app.pid, "SIGKILL")
    } catch {
      // already gone
    }
  }
})

const appEnv = (port: number, env: Readonly<Record<string, string>>): NodeJS.ProcessEnv => {
  const base: NodeJS.ProcessEnv = { ...process.env }
  for (const name of APP_VARIABLES) delete base[name]
  // Rate limits off unless a test asks for them: tests send thousands of requests from one address.
  return { ...base, HOST: "127.0.0.1", PORT: String(port), RATE_LIMIT: "off", ...env }
}

const command = (built: boolean): [string, Array<string>] =>
  // `--import tsx` runs the app in this one process: the tsx launcher would put a relay in front of it, whose own
  // handling of a signal (it ends with 143 if the app is slow to acknowledge) is not the app's.
  built ? [process.execPath, ["dist/main.js"]] : [process.execPath, ["--import", "tsx", "src/main.ts"]]

const exitOf = (child: ChildProcess): Promise<Exit> =>
  new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve({ code: child.exitCode, signal: child.signalCode })
    } else child.once("exit", (code, signal) => resolve({ code, signal }))
  })

const collect = (child: ChildProcess, lines: Array<string>, onLine: () => void) => {
  for (const stream of [child.stdout, child.stderr]) {
    if (stream === null) continue
    createInterface({ input: stream }).on("line", (line) => {
      lines.push(line)
      onLine()
    })
  }
}

/** An answer as a test reads it: the text, and the JSON it holds (undefined when it holds none). */
export const toReply = async (response: Response): Promise<Reply> => {
  const text = await response.text()
  let json: unknown = undefined
  try {
    json = JSON.parse(text)
  } catch {
    json = undefined
  }
  return { status: response.status, headers: response.headers, text, json }
}

const spawnApp = (port: number, options: Pick<AppOptions, "env" | "built">) => {
  const [file, args] = command(options.built ?? false)
  return spawn(file, args, {
    cwd: process.cwd(),
    env: appEnv(port, options.env ?? {}),
    stdio: ["ignore", "pipe", "pipe"],
    // Its own process group, so a kill reaches anything the app started as well.
    detached: true
  })
}

/** Starts the app as a child process and waits until `GET /` answers. */
export const startApp = async (options: AppOptions = {}): Promise<App> => {
  const port = options.port ?? (await freePort())
  const baseUrl = `http://127.0.0.1:${port}`
  const child = spawnApp(port, options)
  const lines: Array<string> = []
  const waiters = new Set<() => void>()
  collect(child, lines, () => waiters.forEach((w) => w()))
  const exited = exitOf(child)
  let hasExited = false
  void exited.then(() => {
    hasExited = true
    running.delete(app)
  })
  const output = () => lines.join("\n")

  const waitForLine = (pattern: RegExp, { from = 0, timeoutMs = 5000 } = {}) =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const found = lines.slice(from).find((line) => pattern.test(line))
        if (found === undefined) return false
        cleanup()
        resolve(found)
        return true
      }
      const timer = setTimeout(() => {
        cleanup()
        reject(new Error(`no line matching ${pattern} within ${timeoutMs} ms; output:\n${output()}`))
      }, timeoutMs)
      const cleanup = () => {
        clearTimeout(timer)
        waiters.delete(waiter)
      }
      const waiter = () => void check()
      if (!check()) waiters.add(waiter)
    })

  const request: App["request"] = async (method, path, body, headers = {}) => {
    const init: RequestInit & { duplex?: "half" } = { method, headers }
    if (body !== undefined) init.body = body
    if (body instanceof ReadableStream) init.duplex = "half"
    return toReply(await fetch(`${baseUrl}${path}`, init))
  }

  const kill = async () => {
    if (hasExited) return
    try {
      process.kill(-child.pid!, "SIGKILL")
    } catch {
      child.kill("SIGKILL")
    }
    await exited
  }

  const stop = async (signal: NodeJS.Signals = "SIGTERM", timeoutMs = 10_000) => {
    // One signal only: a second would end the app at once, before its final flush.
    if (!hasExited) child.kill(signal)
    const timer = sleep(timeoutMs).then(() => "timeout" as const)
    const outcome = await Promise.race([exited, timer])
    if (outcome === "timeout") {
      await kill()
      throw new Error(`app did not exit within ${timeoutMs} ms of ${signal}; output:\n${output()}`)
    }
    return outcome.code
  }

  const app: App = {
    port,
    baseUrl,
    pid: child.pid!,
    lines,
    output,
    waitForLine,
    exited,
    request,
    vote: (pollId, optionId) =>
      request("POST", `/api/v1/vote/${pollId}`, JSON.stringify({ option_id: optionId }), {
        "content-type": "application/json"
      }),
    results: (pollId) => request("GET", `/api/v1/results/${pollId}`),
    stop,
    kill
  }
  running.add(app)

  const readyPath = (options.ready ?? "healthy") === "healthy" ? "/api/v1/health" : "/"
  const deadline = Date.now() + (options.readyTimeoutMs ?? 20_000)
  for (const path of new Set(["/", readyPath])) {
    for (;;) {
      if (hasExited) {
        const exit = await exited
        throw new Error(`app exited (code ${exit.code}, signal ${exit.signal}) before answering; output:\n${output()}`)
      }
      try {
        const response = await fetch(`${baseUrl}${path}`)
        await response.text()
        if (response.status === 200) break
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        await kill()
        throw new Error(`app did not answer GET ${path} with 200 on ${port} in time; output:\n${output()}`)
      }
      await sleep(25)
    }
  }
  return app
}

/** Runs the app expecting it to exit by itself (a bad configuration); kills it after `timeoutMs`. */
export const runToExit = async (
  options: Pick<AppOptions, "env" | "built"> & { readonly timeoutMs?: number }
): Promise<{ code: number | null; output: string }> => {
  const child = spawnApp(await freePort(), options)
  const lines: Array<string> = []
  collect(child, lines, () => {})
  const exited = exitOf(child)
  const timer = sleep(options.timeoutMs ?? 15_000).then(() => "timeout" as const)
  const outcome = await Promise.race([exited, timer])
  if (outcome === "timeout") {
    try {
      process.kill(-child.pid!, "SIGKILL")
    } catch {
      child.kill("SIGKILL")
    }
    await exited
    throw new Error(`app kept running with ${JSON.stringify(options.env)}; output:\n${lines.join("\n")}`)
  }
  // Let the last lines of output arrive.
  await sleep(20)
  return { code: outcome.code, output: lines.join("\n") }
}

/** Kills every app process still running; for afterAll. */
export const killAllApps = async (): Promise<void> => {
  await Promise.all([...running].map((app) => app.kill()))
}

/** Plain node:http request, for what fetch cannot send: a chosen or missing content type, a raw chunked body. */
export const rawRequest = (
  port: number,
  options: {
    readonly method: string
    readonly path: string
    readonly headers?: Record<string, string>
    readonly chunks?: ReadonlyArray<string | Buffer>
  }
): Promise<Reply> =>
  new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: "127.0.0.1", port, method: options.method, path: options.path, headers: options.headers, agent: false },
      (res) => {
        const parts: Array<Buffer> = []
        res.on("data", (chunk: Buffer) => parts.push(chunk))
        res.on("error", reject)
        res.on("end", () => {
          const text = Buffer.concat(parts).toString("utf8")
          let json: unknown = undefined
          try {
            json = JSON.parse(text)
          } catch {
            json = undefined
          }
          const headers = new Headers()
          for (const [name, value] of Object.entries(res.headers)) {
            if (typeof value === "string") headers.set(name, value)
          }
          resolve({ status: res.statusCode ?? 0, headers, text, json })
        })
      }
    )
    req.on("error", reject)
    for (const chunk of options.chunks ?? []) req.write(chunk)
    req.end()
  })
