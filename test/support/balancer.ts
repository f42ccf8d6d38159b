import { type ChildProcess, spawn } from "node:child_process"
import { accessSync, constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createConnection } from "node:net"
import { tmpdir } from "node:os"
import { delimiter, join } from "node:path"
import { createInterface } from "node:readline"
import type { Reply } from "./app.js"
import { type LoadOptions, voteLoops } from "./load.js"
import { freePort } from "./redis.js"
import { type Requester, requestTo } from "./request.js"
import { eventually, sleep } from "./wait.js"

/**
 * A load balancer in front of app instances, for tests: HAProxy with the config below, or nginx with the compose
 * file's `deploy/nginx.conf`. What either may and may not do with a vote is the point:
 *
 * - a request whose connection to an instance failed never reached it, so it is passed to another instance: the client
 *   sees nothing of an instance that is down;
 * - a request that was sent is never sent again, whatever happens next: the instance may have counted it;
 * - the balancer's own answers are JSON with an `x-balancer` header. HAProxy answers 503 when no instance could be
 *   reached (never counted), and 502 or 504 when one took the request and no answer came back (counted or not:
 *   nobody can tell), but for a request that was not the first on its client connection it closes that connection
 *   without an answer (and without a log line) instead; nginx answers 502 in all of these cases.
 *
 * Each request has a connection of its own to its instance, so a stopping instance refuses new requests at connect
 * time instead of closing an idle connection under a request just sent on it.
 */

export interface Backend {
  readonly name: string
  readonly port: number
}

/** One address in front of the instances. */
export interface Front {
  readonly port: number
  readonly baseUrl: string
  /** The balancer's own stdout and stderr. */
  readonly output: () => string
  readonly request: Requester
  readonly stop: () => Promise<void>
}

export interface ServerState {
  readonly name: string
  /** HAProxy's view from its health checks: `UP`, `DOWN`, or a transition such as `UP 1/2`. */
  readonly status: string
  /** 2xx answers the balancer passed on from this instance so far. */
  readonly answered2xx: number
}

export interface Balancer extends Front {
  /** Each instance as HAProxy sees it, from its stats socket. */
  readonly servers: () => Promise<ReadonlyArray<ServerState>>
  /** Until the health checks have `name` in `status` (`UP` or `DOWN`). */
  readonly waitFor: (name: string, status: "UP" | "DOWN", timeoutMs?: number) => Promise<void>
}

/** An answer written by the balancer itself, not passed on from an instance. */
export const fromBalancer = (reply: Reply) => reply.headers.has("x-balancer")

/** The executable `name` on PATH or in the sbin directories (Debian installs HAProxy and nginx in /usr/sbin). */
export const executable = (name: string) => {
  const dirs = [...(process.env.PATH ?? "").split(delimiter), "/usr/sbin", "/usr/local/sbin"]
  for (const dir of dirs.filter((d) => d !== "")) {
    try {
      accessSync(join(dir, name), constants.X_OK)
      return join(dir, name)
    } catch {
      // not here
    }
  }
  throw new Error(`${name} is not installed: apt-get install ${name} (.ci/run does)`)
}

const running = new Set<ChildProcess>()
process.once("exit", () => running.forEach((child) => child.kill("SIGKILL")))

/** Runs a balancer in the foreground until `stop`, which also removes `dir`. */
const launch = (command: string, args: ReadonlyArray<string>, dir: string) => {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] })
  running.add(child)
  const lines: Array<string> = []
  for (const stream of [child.stdout, child.stderr]) {
    createInterface({ input: stream! }).on("line", (line) => lines.push(line))
  }
  const exited = new Promise<void>((resolve) =>
    child.exitCode !== null || child.signalCode !== null ? resolve() : child.once("exit", () => resolve())
  )
  const output = () => lines.join("\n")
  return {
    output,
    /** Throws with the output once the balancer has exited. */
    alive: () => {
      if (child.exitCode !== null) throw new Error(`${command} exited (code ${child.exitCode}):\n${output()}`)
    },
    stop: async () => {
      child.kill("SIGTERM")
      await exited
      running.delete(child)
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

const frontOn = (port: number, balancer: ReturnType<typeof launch>): Front => {
  const baseUrl = `http://127.0.0.1:${port}`
  return {
    port,
    baseUrl,
    output: balancer.output,
    request: requestTo(baseUrl),
    stop: balancer.stop
  }
}

const HEALTH_INTERVAL_MS = 100

const haproxyConfig = (port: number, socket: string, backends: ReadonlyArray<Backend>) => {
  const error = (status: number, code: string, message: string) =>
    `  http-error status ${status} content-type application/json string '${JSON.stringify({ error: code, message })}'` +
    // It closes the connection after its own answers: saying so keeps a client from sending the next request on it.
    " hdr x-balancer haproxy hdr connection close"
  return [
    "global",
    "  maxconn 4096",
    `  stats socket ${socket} mode 600 level admin`,
    "defaults",
    "  mode http",
    "  timeout connect 500ms",
    "  timeout client 10s",
    "  timeout server 10s",
    "  timeout http-keep-alive 10s",
    "  timeout check 500ms",
    "  option http-server-close",
    // Only a connection that could not be made is tried again, each time on another instance.
    "  retries 3",
    "  retry-on conn-failure",
    "  option redispatch 1",
    error(502, "bad_gateway", "the instance closed the connection without an answer; the vote may have been counted"),
    error(503, "no_instance", "no instance could be reached; nothing was counted"),
    error(504, "gateway_timeout", "the instance did not answer in time; the vote may have been counted"),
    "frontend votes",
    `  bind 127.0.0.1:${port}`,
    "  default_backend instances",
    "backend instances",
    "  balance roundrobin",
    // `GET /` is the app's liveness answer: it stops when the listener closes, at the start of a graceful stop.
    "  option httpchk GET /",
    "  http-check expect status 200",
    `  default-server check inter ${HEALTH_INTERVAL_MS}ms fall 2 rise 1`,
    ...backends.map((b) => `  server ${b.name} 127.0.0.1:${b.port}`),
    ""
  ].join("\n")
}

const ask = (socket: string, command: string) =>
  new Promise<string>((resolve, reject) => {
    const parts: Array<Buffer> = []
    const connection = createConnection(socket)
    connection.on("data", (chunk: Buffer) => parts.push(chunk))
    connection.on("error", reject)
    connection.on("end", () => resolve(Buffer.concat(parts).toString("utf8")))
    connection.end(`${command}\n`)
  })

/** HAProxy on a free port in front of `backends` (on 127.0.0.1), in the foreground, ready once each is UP. */
export const startBalancer = async (backends: ReadonlyArray<Backend>): Promise<Balancer> => {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), "livepoll-haproxy-"))
  const socket = join(dir, "admin.sock")
  writeFileSync(join(dir, "haproxy.cfg"), haproxyConfig(port, socket, backends))
  const haproxy = launch(executable("haproxy"), ["-db", "-f", join(dir, "haproxy.cfg")], dir)

  const servers = async (): Promise<ReadonlyArray<ServerState>> => {
    const [header, ...rows] = (await ask(socket, "show stat")).trim().split("\n")
    const columns = header!.replace(/^# /, "").split(",")
    const field = (fields: ReadonlyArray<string>, name: string) => fields[columns.indexOf(name)]!
    return rows
      .map((row) => row.split(","))
      .filter((f) => field(f, "pxname") === "instances" && !["FRONTEND", "BACKEND"].includes(field(f, "svname")))
      .map((f) => ({ name: field(f, "svname"), status: field(f, "status"), answered2xx: Number(field(f, "hrsp_2xx")) }))
  }

  const waitFor = async (name: string, status: "UP" | "DOWN", timeoutMs = 10_000) => {
    await eventually(
      async () => ((await servers()).find((s) => s.name === name)?.status === status ? true : undefined),
      { timeoutMs, intervalMs: HEALTH_INTERVAL_MS / 2, what: `haproxy seeing ${name} ${status}` }
    )
  }

  try {
    await eventually(
      async () => {
        haproxy.alive()
        const states = await servers().catch(() => [])
        return states.length === backends.length && states.every((s) => s.status === "UP") ? true : undefined
      },
      { timeoutMs: 10_000, what: "haproxy with every instance UP" }
    )
  } catch (error) {
    await haproxy.stop()
    throw error
  }
  return { ...frontOn(port, haproxy), servers, waitFor }
}

/** The compose file's nginx config, made to run here: on `port`, in front of `backends`, its files under `dir`. */
export const nginxConfigFor = (port: number, backends: ReadonlyArray<Backend>, dir: string) => {
  const config = readFileSync(new URL("../../deploy/nginx.conf", import.meta.url), "utf8")
  const server = /^(\s*)server app:8000( [^;]*)?;$/m
  const listen = /^(\s*)listen 8000;$/m
  if (!server.test(config) || !listen.test(config)) {
    throw new Error("deploy/nginx.conf has no `server app:8000` or no `listen 8000` line to run it with")
  }
  // The compiled-in temporary directories may not be writable here.
  const temporary = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map((t) => `  ${t}_temp_path ${dir}/${t};`)
  return config
    .replace(server, (_, indent: string, options = "") =>
      backends.map((b) => `${indent}server 127.0.0.1:${b.port}${options};`).join("\n")
    )
    .replace(listen, (_, indent: string) => `${indent}listen 127.0.0.1:${port};`)
    .replace(/^http \{$/m, `http {\n${temporary.join("\n")}`)
}

/** nginx on a free port with the compose file's config, in front of `backends` instead of the `app` replicas. */
export const startNginx = async (backends: ReadonlyArray<Backend>): Promise<Front> => {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), "livepoll-nginx-"))
  writeFileSync(join(dir, "nginx.conf"), nginxConfigFor(port, backends, dir))
  const args = ["-p", dir, "-c", join(dir, "nginx.conf"), "-e", "stderr", "-g", `daemon off; pid ${dir}/nginx.pid;`]
  const nginx = launch(executable("nginx"), args, dir)
  const front = frontOn(port, nginx)
  try {
    await eventually(
      async () => {
        nginx.alive()
        return (await front.request("GET", "/").catch(() => undefined))?.status === 200 ? true : undefined
      },
      { timeoutMs: 10_000, what: "nginx answering GET / with 200" }
    )
  } catch (error) {
    await nginx.stop()
    throw error
  }
  return front
}

/** How a vote sent through the balancer ended. */
export type Outcome =
  /** Counted: the contract's promise. */
  | "accepted"
  /** Not counted: no instance could be reached (the balancer's 503). */
  | "unreached"
  /** Not counted: the app's own 503 (its store unreachable). */
  | "refused"
  /** An instance took the request and its answer was lost (the balancer's 502 or 504): maybe counted. */
  | "cut-off"
  /**
   * The balancer closed the connection without an answer: maybe counted. HAProxy does this instead of a 502 when the
   * request was not the first on its keep-alive connection, as if that connection had been closed while idle.
   */
  | "unanswered"
  /** Anything else: no vote may get it. */
  | "wrong"

export const outcomeOf = (reply: Reply): Outcome => {
  if (reply.status === 200 && !fromBalancer(reply)) return "accepted"
  if (reply.status === 503) return fromBalancer(reply) ? "unreached" : "refused"
  if ((reply.status === 502 || reply.status === 504) && fromBalancer(reply)) return "cut-off"
  return "wrong"
}

/** A vote whose answer was lost (`cut-off` or `unanswered`): `poll/option`, and when. */
export interface CutOff {
  readonly key: string
  readonly at: number
  readonly outcome: "cut-off" | "unanswered"
}

export interface BalancedLoad {
  /** 200s per `poll/option`. */
  readonly accepted: Map<string, number>
  readonly acceptedTotal: number
  /** The balancer's 503s, each sent again. */
  readonly unreached: number
  /** The app's 503s, each sent again. */
  readonly refused: number
  /** Votes whose answer was lost, each sent again. */
  readonly cutOffs: ReadonlyArray<CutOff>
  /** Answers no vote may get: status and body. */
  readonly wrong: ReadonlyArray<string>
}

/**
 * Votes from `clients` concurrent loops through the balancer over `polls` x `options` until `until` resolves. A vote
 * that was not answered 200 is sent again (as a client would: the contract says a 503 may be retried) until it is, or
 * until it gets an answer no vote may get; the report keeps what each answer promised.
 */
export const runBalancedLoad = async (
  balancer: Balancer,
  options: LoadOptions & {
    /** Each client's pause after each vote, to leave the machine room for the instances' restarts. */
    readonly pauseMs?: number
  }
): Promise<BalancedLoad> => {
  const accepted = new Map<string, number>()
  const cutOffs: Array<CutOff> = []
  const wrong: Array<string> = []
  let refused = 0
  let unreached = 0
  await voteLoops(options, async (poll, option, done) => {
    const key = `${poll}/${option}`
    const body = JSON.stringify({ option_id: option })
    for (;;) {
      let outcome: Outcome
      let reply: Reply | undefined
      try {
        reply = await balancer.request("POST", `/api/v1/vote/${poll}`, body)
        outcome = outcomeOf(reply)
      } catch {
        outcome = "unanswered"
      }
      if (outcome === "accepted") accepted.set(key, (accepted.get(key) ?? 0) + 1)
      else if (outcome === "refused") refused++
      else if (outcome === "unreached") unreached++
      else if (outcome === "wrong") wrong.push(`${reply?.status} ${reply?.text}`)
      else cutOffs.push({ key, at: Date.now(), outcome })
      if (outcome === "accepted" || outcome === "wrong" || done()) break
      await sleep(10)
    }
    if (options.pauseMs !== undefined) await sleep(options.pauseMs)
  })
  const acceptedTotal = [...accepted.values()].reduce((a, b) => a + b, 0)
  return { accepted, acceptedTotal, unreached, refused, cutOffs, wrong }
}

/**
 * What the store holds against what the load was told, per poll and option: votes answered 200 but not stored (lost),
 * and votes stored beyond the 200s and the cut-off votes that `mayCount` allows to have been counted (doubled); and
 * how many of those were counted.
 */
export const reconcile = (
  load: BalancedLoad,
  stored: ReadonlyMap<string, number>,
  mayCount: (cutOff: CutOff) => boolean = () => true
) => {
  const allowed = new Map<string, number>()
  for (const c of load.cutOffs.filter(mayCount)) allowed.set(c.key, (allowed.get(c.key) ?? 0) + 1)
  let lost = 0
  let doubled = 0
  let cutOffCounted = 0
  for (const key of new Set([...load.accepted.keys(), ...stored.keys()])) {
    const extra = (stored.get(key) ?? 0) - (load.accepted.get(key) ?? 0)
    const maybe = allowed.get(key) ?? 0
    if (extra < 0) lost -= extra
    else {
      doubled += Math.max(0, extra - maybe)
      cutOffCounted += Math.min(extra, maybe)
    }
  }
  return { lost, doubled, cutOffCounted }
}
