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
  "JOURNAL_DIR"
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

const millis = (name: string, defaultValue: number, min: number) =>
  validated(Config.integer(name).pipe(Config.withDefault(defaultValue)), name, (n) =>
    n >= min ? Either.right(n) : Either.left(`must be at least ${min}, got ${n}`)
  )

export const AppConfig = Config.all({
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
  cacheTtlMs: millis("CACHE_TTL_MS", 5000, 0),
  flushIntervalMs: millis("FLUSH_INTERVAL_MS", 10000, 1),
  journalDir: Config.option(Config.nonEmptyString("JOURNAL_DIR")).pipe(
    Config.withDescription("directory of the write-behind journal; unset: no journal")
  )
})

export type AppConfig = Config.Config.Success<typeof AppConfig>
