import { Config, ConfigError, Either, Option } from "effect"
import { availableParallelism } from "node:os"

export const STAGES = ["memory", "redis", "cached", "batched", "sharded", "full", "cluster"] as const

export type Stage = (typeof STAGES)[number]

export const RATE_LIMIT_MODES = ["auto", "on", "off"] as const
export const LOG_FORMATS = ["json", "logfmt"] as const

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

/** Worker processes at most: each holds its own Redis connections, buffer and memory. */
export const MAX_WORKERS = 256

/** `WORKERS`: a whole number from 1 to MAX_WORKERS, or `auto` for one per CPU the process may run on. */
export const parseWorkers = (text: string): Either.Either<number, string> => {
  const trimmed = text.trim()
  if (trimmed === "auto") return Either.right(Math.min(MAX_WORKERS, availableParallelism()))
  const n = /^\d{1,4}$/.test(trimmed) ? Number(trimmed) : NaN
  return n >= 1 && n <= MAX_WORKERS
    ? Either.right(n)
    : Either.left(`must be a whole number from 1 to ${MAX_WORKERS}, or auto, got ${text}`)
}

/** `REDIS_CLUSTER`: seed nodes, comma-separated `redis://host:port`. */
export const parseSeeds = (text: string): Either.Either<ReadonlyArray<string>, string> => {
  const seeds: Array<string> = []
  for (const entry of text.split(",").map((e) => e.trim())) {
    if (entry === "") return Either.left("has an empty entry")
    const url = parseRedisUrl(entry)
    if (Either.isLeft(url)) return Either.left(url.left)
    seeds.push(url.right)
  }
  return Either.right(seeds)
}

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

/**
 * Every setting of the app, each once: its variable, its config (type, default, bounds, description) and how the
 * start-up line shows it. The list of variables and the start-up line are derived from this table, and a test holds
 * the README's configuration table to it.
 */
const setting = <A>(env: string, config: (env: string) => Config.Config<A>, show: (a: A) => string = String) => ({
  env,
  config: config(env),
  show
})

const SETTINGS = {
  port: setting("PORT", (env) => Config.port(env).pipe(Config.withDefault(8000), Config.withDescription("HTTP port"))),
  host: setting("HOST", (env) =>
    Config.string(env).pipe(Config.withDefault("0.0.0.0"), Config.withDescription("HTTP interface"))
  ),
  stage: setting("POLL_STAGE", (env) =>
    Config.literal(...STAGES)(env).pipe(
      Config.withDefault("memory" as const),
      Config.withDescription("which layer composition runs")
    )
  ),
  redisUrl: setting("REDIS_URL", (env) =>
    validated(
      Config.string(env).pipe(
        Config.withDefault("redis://127.0.0.1:6379"),
        Config.withDescription("the single node of redis, cached, batched")
      ),
      env,
      parseRedisUrl
    )
  ),
  redisNodes: setting(
    "REDIS_NODES",
    (env) =>
      validated(
        Config.string(env).pipe(
          Config.withDefault("redis://127.0.0.1:7000,redis://127.0.0.1:7001"),
          Config.withDescription("shards of sharded and full: URL or NAME=URL, comma-separated")
        ),
        env,
        parseRedisNodes
      ),
    (nodes) => nodes.map((n) => `${n.name}=${n.url}`).join(",")
  ),
  redisNodesNext: setting(
    "REDIS_NODES_NEXT",
    (env) =>
      Config.option(
        validated(
          Config.string(env).pipe(
            Config.withDescription(
              "the shards of the ring an online reshard moves to (sharded and full), in REDIS_NODES syntax; unset: none"
            )
          ),
          env,
          parseRedisNodes
        )
      ),
    (nodes) =>
      Option.match(nodes, { onNone: () => "none", onSome: (n) => n.map((x) => `${x.name}=${x.url}`).join(",") })
  ),
  redisCluster: setting(
    "REDIS_CLUSTER",
    (env) =>
      Config.option(
        validated(
          Config.string(env).pipe(
            Config.withDescription("seed nodes of the cluster stage's Redis Cluster, comma-separated redis:// URLs")
          ),
          env,
          parseSeeds
        )
      ),
    (seeds) => Option.match(seeds, { onNone: () => "none", onSome: (s) => s.join(",") })
  ),
  redisWaitReplicas: setting(
    "REDIS_WAIT_REPLICAS",
    (env) =>
      Config.option(
        validated(
          Config.integer(env).pipe(
            Config.withDescription(
              "replicas that must hold a flushed batch (WAIT) before the buffer forgets it (cluster stage); unset: 1 " +
                "if the cluster's masters have replicas when the app starts, else 0"
            )
          ),
          env,
          (n) => (n >= 0 && n <= 5 ? Either.right(n) : Either.left(`must be from 0 to 5, got ${n}`))
        )
      ),
    (n) => Option.match(n, { onNone: () => "auto", onSome: String })
  ),
  // Above the 300 ms a fenced script keeps for its answer to come back and, with the 200 ms second guard on top,
  // still under the contract's 2 s to a 503.
  redisCommandTimeoutMs: setting("REDIS_COMMAND_TIMEOUT_MS", (env) =>
    bounded(
      env,
      1500,
      400,
      "how long a Redis command may go unanswered before it fails and the request is answered 503",
      1700
    )
  ),
  cacheTtlMs: setting("CACHE_TTL_MS", (env) => bounded(env, 5000, 0, "read-cache lifetime")),
  cacheMaxPolls: setting("CACHE_MAX_POLLS", (env) =>
    bounded(
      env,
      100_000,
      1,
      "polls each cache (results, definitions) holds at once; the least recently used goes first"
    )
  ),
  definitionsCacheTtlMs: setting("DEFINITIONS_CACHE_TTL_MS", (env) =>
    bounded(
      env,
      1000,
      0,
      "how long a poll's definition is reused before it is read again, at most (a change made on another " +
        "instance usually arrives sooner, over pub/sub)"
    )
  ),
  // Each resync reads the whole index of every node: not more than ten times a second.
  definitionsResyncMs: setting("DEFINITIONS_RESYNC_MS", (env) =>
    bounded(
      env,
      5000,
      100,
      "how often each instance re-reads which polls are defined, for an announcement it missed while a node was away",
      MAX_TIMER_MS
    )
  ),
  flushIntervalMs: setting("FLUSH_INTERVAL_MS", (env) => bounded(env, 10000, 1, "write-behind flush period")),
  // The waits double: ten retries already hold a failing round for 102 s.
  flushRetries: setting("FLUSH_RETRIES", (env) =>
    bounded(
      env,
      2,
      0,
      "retries of a failed batch within one flush round (100 ms after the failure, each wait twice the last); then " +
        "it waits for the next round",
      10
    )
  ),
  bufferMaxEntries: setting("BUFFER_MAX_ENTRIES", (env) =>
    bounded(
      env,
      200_000,
      1,
      "(poll, option) entries the write-behind buffer holds at most; half of it flushes early, past it a vote for a " +
        "new entry is 503 buffer_full"
    )
  ),
  shutdownFlushMs: setting("SHUTDOWN_FLUSH_MS", (env) =>
    timeout(env, 5000, "how long the final flush on SIGTERM may take before it reports what is left")
  ),
  workers: setting("WORKERS", (env) =>
    validated(
      Config.string(env).pipe(
        Config.withDefault("1"),
        Config.withDescription(
          "worker processes sharing the port (node:cluster), each with its own buffer and journal; auto: one per " +
            "available CPU. More than 1 needs a stage that keeps its counts in Redis (not memory)"
        )
      ),
      env,
      parseWorkers
    )
  ),
  journalDir: setting(
    "JOURNAL_DIR",
    (env) =>
      Config.option(Config.nonEmptyString(env)).pipe(
        Config.withDescription("directory of the write-behind journal; unset: no journal")
      ),
    (dir) => Option.getOrElse(dir, () => "off")
  ),
  maxPolls: setting("MAX_POLLS", (env) =>
    bounded(
      env,
      10_000,
      1,
      "poll definitions a store node holds at most; past it POST /polls is answered 409 too_many_polls"
    )
  ),
  maxConnections: setting("MAX_CONNECTIONS", (env) =>
    bounded(
      env,
      10_000,
      1,
      "open client connections at once; past it a new connection is answered 503 and closed (lowered to fit the " +
        "process's open-file limit)"
    )
  ),
  maxStreams: setting("MAX_STREAMS", (env) =>
    bounded(
      env,
      9_000,
      0,
      "live result streams at once; past it a new stream is answered 503 (lowered to leave a tenth of the " +
        "connections to other requests)"
    )
  ),
  // Results more than a minute old are not live.
  streamUpdateIntervalMs: setting("STREAM_UPDATE_INTERVAL_MS", (env) =>
    bounded(
      env,
      100,
      1,
      "a poll's live results are re-read and sent at most this often, however fast votes arrive",
      60_000
    )
  ),
  // More than ten comments a second per stream is load, not keep-alive.
  streamHeartbeatMs: setting("STREAM_HEARTBEAT_MS", (env) =>
    bounded(
      env,
      15_000,
      100,
      "how often every live stream gets a keep-alive comment, so proxies keep it open",
      MAX_TIMER_MS
    )
  ),
  headersTimeoutMs: setting("HEADERS_TIMEOUT_MS", (env) =>
    timeout(
      env,
      10_000,
      "how long a client may take to send a request's headers (on a new connection, counted from connecting)"
    )
  ),
  requestTimeoutMs: setting("REQUEST_TIMEOUT_MS", (env) =>
    timeout(
      env,
      20_000,
      "how long a client may take to send a whole request, headers and body; a body shorter than its " +
        "Content-Length is cut here"
    )
  ),
  keepAliveTimeoutMs: setting("KEEP_ALIVE_TIMEOUT_MS", (env) =>
    timeout(env, 5_000, "how long an idle keep-alive connection stays open")
  ),
  drainMs: setting("SHUTDOWN_DRAIN_MS", (env) =>
    timeout(env, 3000, "how long shutdown waits for open requests before it closes their connections")
  ),
  rateLimit: setting("RATE_LIMIT", (env) =>
    Config.literal(...RATE_LIMIT_MODES)(env).pipe(
      Config.withDefault("auto" as const),
      Config.withDescription(
        "per-client rate limits: on, off, or auto (on in every stage but memory, shared by the instances through Redis)"
      )
    )
  ),
  rateLimitWindowMs: setting("RATE_LIMIT_WINDOW_MS", (env) =>
    bounded(env, 60_000, 1000, "the window the rate limits' quotas are counted over", 24 * 60 * 60 * 1000)
  ),
  rateLimitClient: setting("RATE_LIMIT_CLIENT", (env) =>
    bounded(
      env,
      1200,
      0,
      "requests one client address may make per window (GET /, /metrics and the docs are exempt); 0: no such limit"
    )
  ),
  rateLimitVoter: setting("RATE_LIMIT_VOTER", (env) =>
    bounded(env, 30, 0, "votes one voter id may cast per window, from any address; 0: no such limit")
  ),
  trustProxy: setting("TRUST_PROXY", (env) =>
    bounded(
      env,
      0,
      0,
      "proxies in front of the app that append to X-Forwarded-For; the client is the address that many entries " +
        "from its end. 0: the header is ignored and the client is the connection's address",
      16
    )
  ),
  logFormat: setting("LOG_FORMAT", (env) =>
    Config.literal(...LOG_FORMATS)(env).pipe(
      Config.withDefault("json" as const),
      Config.withDescription("log lines as JSON objects, or as logfmt (npm run dev)")
    )
  ),
  accessLogSample: setting("ACCESS_LOG_SAMPLE", (env) =>
    validated(
      Config.number(env).pipe(
        Config.withDefault(0),
        Config.withDescription(
          "the share (0 to 1) of votes, results reads, streams and probes that get an access log line; requests " +
            "that define, close, list or export polls always get one"
        )
      ),
      env,
      (n) => (n >= 0 && n <= 1 ? Either.right(n) : Either.left(`must be between 0 and 1, got ${n}`))
    )
  )
}

type Settings = typeof SETTINGS

/** `LOG_FORMAT` alone: the logger is chosen before the rest of the config is read (and reports it if it is bad). */
export const LogFormat = SETTINGS.logFormat.config

/** Every environment variable the app reads. */
export const VARIABLES: ReadonlyArray<string> = Object.values(SETTINGS).map((s) => s.env)

const settings = Config.all(
  Object.fromEntries(Object.entries(SETTINGS).map(([key, s]) => [key, s.config])) as {
    readonly [K in keyof Settings]: Settings[K]["config"]
  }
)

// The headers are part of the request: node:http refuses to start with a headers deadline past the request's.
export const AppConfig = Config.mapOrFail(settings, (c) =>
  c.headersTimeoutMs > c.requestTimeoutMs
    ? Either.left(
        ConfigError.InvalidData(
          ["HEADERS_TIMEOUT_MS"],
          `must not exceed REQUEST_TIMEOUT_MS (${c.requestTimeoutMs}), got ${c.headersTimeoutMs}`
        )
      )
    : c.stage === "cluster" && Option.isNone(c.redisCluster)
      ? Either.left(
          ConfigError.InvalidData(["REDIS_CLUSTER"], "must name the cluster's seed nodes for POLL_STAGE=cluster")
        )
      : Either.right(c)
)

export type AppConfig = Config.Config.Success<typeof AppConfig>

/** The rate limits in force, or undefined when off (`RATE_LIMIT`; auto: on where a Redis shares them). */
export const rateLimitsOf = (c: AppConfig) =>
  c.rateLimit === "off" ||
  (c.rateLimit === "auto" && c.stage === "memory") ||
  (c.rateLimitClient === 0 && c.rateLimitVoter === 0)
    ? undefined
    : { windowMs: c.rateLimitWindowMs, client: c.rateLimitClient, voter: c.rateLimitVoter }

export type RateLimits = NonNullable<ReturnType<typeof rateLimitsOf>>

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

/** The start-up line's account of the configuration: every setting, as its variable names it. */
export const describe = (c: AppConfig): string =>
  (Object.keys(SETTINGS) as Array<keyof Settings>)
    .map((key) => {
      const { env, show } = SETTINGS[key] as { env: string; show: (a: unknown) => string }
      return `${env.toLowerCase()}=${show(c[key])}`
    })
    .join(" ")
