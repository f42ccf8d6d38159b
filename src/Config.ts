import { Config, ConfigError, Either } from "effect"

export const STAGES = ["memory", "redis", "cached", "batched", "sharded", "full"] as const

/** Every environment variable the app reads. */
export const VARIABLES = [
  "PORT",
  "HOST",
  "POLL_STAGE",
  "REDIS_URL",
  "REDIS_NODES",
  "CACHE_TTL_MS",
  "FLUSH_INTERVAL_MS",
  "JOURNAL_DIR",
  "MAX_POLLS",
  "MAX_CONNECTIONS",
  "MAX_STREAMS",
  "HEADERS_TIMEOUT_MS",
  "REQUEST_TIMEOUT_MS",
  "KEEP_ALIVE_TIMEOUT_MS"
] as const
export type Stage = (typeof STAGES)[number]

export interface RedisNode {
  readonly name: string
  readonly url: string
}

const parseRedisUrl = (text: string): Either.Either<string, string> => {
  try {
    const url = new URL(text)
    if (url.protocol !== "redis:" && url.protocol !== "rediss:") return Either.left(`${text} is not a redis:// URL`)
    if (url.hostname === "") return Either.left(`${text} has no host`)
    return Either.right(text)
  } catch {
    return Either.left(`${text} is not a URL`)
  }
}

const portOf = (url: string) => new URL(url).port || "6379"

/** `REDIS_NODES` entries: `URL` or `NAME=URL`; an unnamed node is called `redis_<port>`. */
export const parseRedisNodes = (text: string): Either.Either<ReadonlyArray<RedisNode>, string> => {
  const nodes: Array<RedisNode> = []
  for (const entry of text.split(",").map((e) => e.trim())) {
    if (entry === "") return Either.left("has an empty entry")
    const eq = entry.indexOf("=")
    const named = eq > 0 && !entry.slice(0, eq).includes("://")
    const url = parseRedisUrl(named ? entry.slice(eq + 1) : entry)
    if (Either.isLeft(url)) return Either.left(url.left)
    const name = named ? entry.slice(0, eq) : `redis_${portOf(url.right)}`
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) return Either.left(`node name ${name} must be 1-64 of A-Z a-z 0-9 _ - .`)
    if (nodes.some((n) => n.name === name)) return Either.left(`names node ${name} twice`)
    nodes.push({ name, url: url.right })
  }
  return Either.right(nodes)
}

const validated = <A, B>(config: Config.Config<A>, name: string, check: (a: A) => Either.Either<B, string>) =>
  Config.mapOrFail(config, (value) => Either.mapLeft(check(value), (reason) => ConfigError.InvalidData([name], reason)))

const bounded = (name: string, defaultValue: number, min: number, description: string, max = Infinity) =>
  validated(
    Config.integer(name).pipe(Config.withDefault(defaultValue), Config.withDescription(description)),
    name,
    (n) =>
      n < min
        ? Either.left(`must be at least ${min}, got ${n}`)
        : n > max
          ? Either.left(`must be at most ${max}, got ${n}`)
          : Either.right(n)
  )

/** Node's timers hold at most this many milliseconds (about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1
const timeout = (name: string, defaultValue: number, description: string) =>
  bounded(name, defaultValue, 1, description, MAX_TIMER_MS)

const settings = Config.all({
  port: Config.port("PORT").pipe(Config.withDefault(8000), Config.withDescription("HTTP port")),
  host: Config.string("HOST").pipe(Config.withDefault("0.0.0.0")),
  stage: Config.literal(...STAGES)("POLL_STAGE").pipe(
    Config.withDefault("memory" as const),
    Config.withDescription("which layer composition runs")
  ),
  redisUrl: validated(
    Config.string("REDIS_URL").pipe(Config.withDefault("redis://127.0.0.1:6379")),
    "REDIS_URL",
    parseRedisUrl
  ),
  redisNodes: validated(
    Config.string("REDIS_NODES").pipe(Config.withDefault("redis://127.0.0.1:7000,redis://127.0.0.1:7001")),
    "REDIS_NODES",
    parseRedisNodes
  ),
  cacheTtlMs: bounded("CACHE_TTL_MS", 5000, 0, "read-cache lifetime"),
  flushIntervalMs: bounded("FLUSH_INTERVAL_MS", 10000, 1, "write-behind flush period"),
  journalDir: Config.option(Config.nonEmptyString("JOURNAL_DIR")).pipe(
    Config.withDescription("directory of the write-behind journal; unset: no journal")
  ),
  maxPolls: bounded(
    "MAX_POLLS",
    10_000,
    1,
    "poll definitions a store node holds at most; past it POST /polls is answered 409 too_many_polls"
  ),
  maxConnections: bounded(
    "MAX_CONNECTIONS",
    10_000,
    1,
    "open client connections at once; past it a new connection is answered 503 and closed (lowered to fit the " +
      "process's open-file limit)"
  ),
  maxStreams: bounded(
    "MAX_STREAMS",
    9_000,
    0,
    "live result streams at once; past it a new stream is answered 503 (lowered to leave a tenth of the connections " +
      "to other requests)"
  ),
  headersTimeoutMs: timeout(
    "HEADERS_TIMEOUT_MS",
    10_000,
    "how long a client may take to send a request's headers (on a new connection, counted from connecting)"
  ),
  requestTimeoutMs: timeout(
    "REQUEST_TIMEOUT_MS",
    20_000,
    "how long a client may take to send a whole request, headers and body; a body shorter than its Content-Length " +
      "is cut here"
  ),
  keepAliveTimeoutMs: timeout("KEEP_ALIVE_TIMEOUT_MS", 5_000, "how long an idle keep-alive connection stays open")
})

// The headers are part of the request: node:http refuses to start with a headers deadline past the request's.
export const AppConfig = Config.mapOrFail(settings, (c) =>
  c.headersTimeoutMs <= c.requestTimeoutMs
    ? Either.right(c)
    : Either.left(
        ConfigError.InvalidData(
          ["HEADERS_TIMEOUT_MS"],
          `must not exceed REQUEST_TIMEOUT_MS (${c.requestTimeoutMs}), got ${c.headersTimeoutMs}`
        )
      )
)

export type AppConfig = Config.Config.Success<typeof AppConfig>

/** The bounds of the HTTP listener as configured; `effectiveLimits` fits them to the process. */
export type ConnectionLimits = Pick<AppConfig, "maxConnections" | "maxStreams">

/** File descriptors kept from client connections (Redis connections, the journal, stdio, refused sockets), at most. */
export const FD_RESERVE = 128
/** Connections over the cap held at once while their 503 goes out; beyond it they are cut without one. */
export const MAX_REFUSING = 32

/**
 * The caps the listener enforces. Connections stay below the process's open-file limit (when known; Node raises the
 * soft limit to the hard one as it starts), with FD_RESERVE (a quarter of a small limit) left for everything else, so
 * the app never meets EMFILE and a client over the cap gets an answer instead of a reset. Streams leave at least a tenth of the connections (and at least one) to
 * other requests, so votes still get in while every stream slot is taken.
 */
export const effectiveLimits = (limits: ConnectionLimits, openFileLimit: number | undefined) => {
  const reserve = openFileLimit === undefined ? 0 : Math.min(FD_RESERVE, Math.ceil(openFileLimit / 4))
  const connections =
    openFileLimit === undefined
      ? limits.maxConnections
      : Math.max(1, Math.min(limits.maxConnections, openFileLimit - reserve))
  const streams = Math.max(0, Math.min(limits.maxStreams, connections - Math.max(1, Math.ceil(connections / 10))))
  const refusing = openFileLimit === undefined ? MAX_REFUSING : Math.min(MAX_REFUSING, Math.floor(reserve / 2))
  return { connections, streams, refusing }
}

/** The soft "Max open files" of /proc/self/limits; undefined when unlimited or not stated. */
export const parseOpenFileLimit = (limits: string): number | undefined => {
  const line = limits.split("\n").find((l) => l.startsWith("Max open files"))
  const soft = line?.slice("Max open files".length).trim().split(/\s+/)[0]
  if (soft === undefined || !/^\d+$/.test(soft)) return undefined
  return Number(soft)
}
