import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Option } from "effect"
import { readFileSync } from "node:fs"
import {
  AppConfig,
  describe as describeConfig,
  effectiveLimits,
  parseOpenFileLimit,
  parseRedisNodes,
  rateLimitsOf,
  VARIABLES
} from "../src/Config.js"

const load = (env: Record<string, string>) =>
  Effect.withConfigProvider(AppConfig, ConfigProvider.fromMap(new Map(Object.entries(env))))

/** Loading fails, and the error names the variable at fault. */
const failsNaming = (variable: string, env: Record<string, string>) =>
  Effect.gen(function* () {
    const error = yield* Effect.flip(load(env))
    expect(String(error)).toContain(variable)
  })

describe("AppConfig", () => {
  it.effect("has the documented defaults", () =>
    Effect.gen(function* () {
      const config = yield* load({})
      expect(config.stage).toBe("memory")
      expect(config.port).toBe(8000)
      expect(config.host).toBe("0.0.0.0")
      expect(config.cacheTtlMs).toBe(5000)
      expect(config.flushIntervalMs).toBe(10000)
      expect(config.redisUrl).toBe("redis://127.0.0.1:6379")
      expect(config.redisNodes).toEqual([
        { name: "redis_7000", url: "redis://127.0.0.1:7000" },
        { name: "redis_7001", url: "redis://127.0.0.1:7001" }
      ])
      expect(Option.isNone(config.journalDir)).toBe(true)
      expect(config.maxConnections).toBe(10_000)
      expect(config.maxStreams).toBe(9_000)
      expect(config.headersTimeoutMs).toBe(10_000)
      expect(config.requestTimeoutMs).toBe(20_000)
      expect(config.keepAliveTimeoutMs).toBe(5_000)
      expect(config.redisCommandTimeoutMs).toBe(1500)
      expect(config.definitionsResyncMs).toBe(5000)
      expect(config.flushRetries).toBe(2)
      expect(config.streamUpdateIntervalMs).toBe(100)
      expect(config.streamHeartbeatMs).toBe(15_000)
      expect(config.rateLimit).toBe("auto")
      expect(config.logFormat).toBe("json")
      expect(config.accessLogSample).toBe(0)
    })
  )

  it.effect(
    "the cluster stage needs REDIS_CLUSTER, and waits for replicas as the cluster's shape says unless told",
    () =>
      Effect.gen(function* () {
        yield* failsNaming("REDIS_CLUSTER", { POLL_STAGE: "cluster" })
        const config = yield* load({ POLL_STAGE: "cluster", REDIS_CLUSTER: "redis://127.0.0.1:7100" })
        expect(config.redisCluster).toEqual(Option.some(["redis://127.0.0.1:7100"]))
        expect(Option.isNone(config.redisWaitReplicas)).toBe(true)
      })
  )

  it.effect(
    "rate limits: auto is on wherever a Redis can share them, off in memory; off, or both quotas 0, is off",
    () =>
      Effect.gen(function* () {
        const limits = { windowMs: 60_000, client: 1200, voter: 30 }
        expect(rateLimitsOf(yield* load({}))).toBeUndefined()
        for (const stage of ["redis", "cached", "batched", "sharded", "full"]) {
          expect(rateLimitsOf(yield* load({ POLL_STAGE: stage })), stage).toEqual(limits)
        }
        expect(rateLimitsOf(yield* load({ RATE_LIMIT: "on" }))).toEqual(limits)
        expect(rateLimitsOf(yield* load({ POLL_STAGE: "full", RATE_LIMIT: "off" }))).toBeUndefined()
        expect(
          rateLimitsOf(yield* load({ POLL_STAGE: "full", RATE_LIMIT_CLIENT: "0", RATE_LIMIT_VOTER: "0" }))
        ).toBeUndefined()
      })
  )

  it.effect.each([
    ["RATE_LIMIT", "sometimes"],
    ["RATE_LIMIT_WINDOW_MS", "999"],
    ["RATE_LIMIT_CLIENT", "-1"],
    ["TRUST_PROXY", "17"],
    ["LOG_FORMAT", "xml"],
    ["ACCESS_LOG_SAMPLE", "1.5"],
    ["ACCESS_LOG_SAMPLE", "-0.1"],
    ["REDIS_CLUSTER", "redis://a:1,,redis://b:2"],
    ["REDIS_CLUSTER", "http://10.0.0.1:7000"],
    ["REDIS_WAIT_REPLICAS", "6"]
  ] as const)("refuses %s=%s, naming it", ([variable, value]) => failsNaming(variable, { [variable]: value }))

  it.effect("reads every variable", () =>
    Effect.gen(function* () {
      const config = yield* load({
        PORT: "9123",
        HOST: "127.0.0.1",
        POLL_STAGE: "sharded",
        REDIS_URL: "redis://cache.internal:6390/2",
        REDIS_NODES: "east=redis://10.0.0.1:6380, west=redis://10.0.0.2:6381",
        REDIS_NODES_NEXT: "east=redis://10.0.0.1:6380,west=redis://10.0.0.2:6381,north=redis://10.0.0.3:6382",
        REDIS_COMMAND_TIMEOUT_MS: "900",
        CACHE_TTL_MS: "250",
        CACHE_MAX_POLLS: "77",
        DEFINITIONS_CACHE_TTL_MS: "66",
        DEFINITIONS_RESYNC_MS: "2500",
        FLUSH_INTERVAL_MS: "300",
        FLUSH_RETRIES: "5",
        BUFFER_MAX_ENTRIES: "88",
        SHUTDOWN_FLUSH_MS: "99",
        WORKERS: "3",
        JOURNAL_DIR: "/var/lib/livepoll",
        MAX_POLLS: "50",
        MAX_CONNECTIONS: "500",
        MAX_STREAMS: "400",
        STREAM_UPDATE_INTERVAL_MS: "250",
        STREAM_HEARTBEAT_MS: "30000",
        HEADERS_TIMEOUT_MS: "3000",
        REQUEST_TIMEOUT_MS: "4000",
        KEEP_ALIVE_TIMEOUT_MS: "1500",
        SHUTDOWN_DRAIN_MS: "1600",
        REDIS_CLUSTER: "redis://10.0.0.5:7100, redis://10.0.0.6:7101",
        REDIS_WAIT_REPLICAS: "0",
        RATE_LIMIT: "on",
        RATE_LIMIT_WINDOW_MS: "10000",
        RATE_LIMIT_CLIENT: "12",
        RATE_LIMIT_VOTER: "3",
        TRUST_PROXY: "2",
        LOG_FORMAT: "logfmt",
        ACCESS_LOG_SAMPLE: "0.25"
      })
      expect(config).toEqual({
        port: 9123,
        host: "127.0.0.1",
        stage: "sharded",
        redisUrl: "redis://cache.internal:6390/2",
        redisNodes: [
          { name: "east", url: "redis://10.0.0.1:6380" },
          { name: "west", url: "redis://10.0.0.2:6381" }
        ],
        redisNodesNext: Option.some([
          { name: "east", url: "redis://10.0.0.1:6380" },
          { name: "west", url: "redis://10.0.0.2:6381" },
          { name: "north", url: "redis://10.0.0.3:6382" }
        ]),
        redisCommandTimeoutMs: 900,
        cacheTtlMs: 250,
        cacheMaxPolls: 77,
        definitionsCacheTtlMs: 66,
        definitionsResyncMs: 2500,
        flushIntervalMs: 300,
        flushRetries: 5,
        bufferMaxEntries: 88,
        shutdownFlushMs: 99,
        workers: 3,
        journalDir: Option.some("/var/lib/livepoll"),
        maxPolls: 50,
        maxConnections: 500,
        maxStreams: 400,
        streamUpdateIntervalMs: 250,
        streamHeartbeatMs: 30_000,
        headersTimeoutMs: 3000,
        requestTimeoutMs: 4000,
        keepAliveTimeoutMs: 1500,
        drainMs: 1600,
        redisCluster: Option.some(["redis://10.0.0.5:7100", "redis://10.0.0.6:7101"]),
        redisWaitReplicas: Option.some(0),
        rateLimit: "on",
        rateLimitWindowMs: 10_000,
        rateLimitClient: 12,
        rateLimitVoter: 3,
        trustProxy: 2,
        logFormat: "logfmt",
        accessLogSample: 0.25
      })
    })
  )

  it.effect("accepts every stage", () =>
    Effect.gen(function* () {
      for (const stage of ["memory", "redis", "cached", "batched", "sharded", "full"]) {
        expect((yield* load({ POLL_STAGE: stage })).stage).toBe(stage)
      }
    })
  )

  it.effect("names REDIS_NODES entries NAME=URL, or redis_<port> when unnamed", () =>
    Effect.gen(function* () {
      const config = yield* load({
        REDIS_NODES: "primary=redis://127.0.0.1:6390,redis://127.0.0.1:6391,redis://db.local,rediss://user:pw@h:6400"
      })
      expect(config.redisNodes).toEqual([
        { name: "primary", url: "redis://127.0.0.1:6390" },
        { name: "redis_6391", url: "redis://127.0.0.1:6391" },
        { name: "redis_6379", url: "redis://db.local" },
        { name: "redis_6400", url: "rediss://user:pw@h:6400" }
      ])
    })
  )

  it.effect("rejects an unknown stage, naming POLL_STAGE", () => failsNaming("POLL_STAGE", { POLL_STAGE: "turbo" }))

  it.effect("rejects a non-numeric CACHE_TTL_MS, naming it", () => failsNaming("CACHE_TTL_MS", { CACHE_TTL_MS: "5s" }))

  it.effect("rejects a negative CACHE_TTL_MS and a zero FLUSH_INTERVAL_MS, naming each", () =>
    Effect.gen(function* () {
      yield* failsNaming("CACHE_TTL_MS", { CACHE_TTL_MS: "-1" })
      yield* failsNaming("FLUSH_INTERVAL_MS", { FLUSH_INTERVAL_MS: "0" })
      yield* failsNaming("FLUSH_INTERVAL_MS", { FLUSH_INTERVAL_MS: "soon" })
    })
  )

  it.effect("rejects a non-numeric or out-of-range PORT, naming it", () =>
    Effect.gen(function* () {
      yield* failsNaming("PORT", { PORT: "http" })
      yield* failsNaming("PORT", { PORT: "70000" })
    })
  )

  it.effect("rejects bounds out of range, naming each", () =>
    Effect.gen(function* () {
      yield* failsNaming("MAX_CONNECTIONS", { MAX_CONNECTIONS: "0" })
      yield* failsNaming("MAX_CONNECTIONS", { MAX_CONNECTIONS: "many" })
      yield* failsNaming("MAX_STREAMS", { MAX_STREAMS: "-1" })
      yield* failsNaming("HEADERS_TIMEOUT_MS", { HEADERS_TIMEOUT_MS: "0" })
      yield* failsNaming("KEEP_ALIVE_TIMEOUT_MS", { KEEP_ALIVE_TIMEOUT_MS: "0" })
      // Past what a Node timer can hold (it would fire at once).
      yield* failsNaming("REQUEST_TIMEOUT_MS", { REQUEST_TIMEOUT_MS: String(2 ** 31) })
      expect((yield* load({ MAX_STREAMS: "0" })).maxStreams).toBe(0)
    })
  )

  it.effect("bounds the Redis command time-out so a 503 still comes within the contract's 2 s", () =>
    Effect.gen(function* () {
      // At most the fenced scripts' margin (300 ms) leaves no time to apply a write; past 1700 the second guard
      // (200 ms on top) reaches the 2 s.
      yield* failsNaming("REDIS_COMMAND_TIMEOUT_MS", { REDIS_COMMAND_TIMEOUT_MS: "300" })
      yield* failsNaming("REDIS_COMMAND_TIMEOUT_MS", { REDIS_COMMAND_TIMEOUT_MS: "399" })
      yield* failsNaming("REDIS_COMMAND_TIMEOUT_MS", { REDIS_COMMAND_TIMEOUT_MS: "1701" })
      expect((yield* load({ REDIS_COMMAND_TIMEOUT_MS: "400" })).redisCommandTimeoutMs).toBe(400)
      expect((yield* load({ REDIS_COMMAND_TIMEOUT_MS: "1700" })).redisCommandTimeoutMs).toBe(1700)
    })
  )

  it.effect("rejects tuning numbers out of their bounds, naming each", () =>
    Effect.gen(function* () {
      yield* failsNaming("FLUSH_RETRIES", { FLUSH_RETRIES: "-1" })
      yield* failsNaming("FLUSH_RETRIES", { FLUSH_RETRIES: "11" })
      yield* failsNaming("STREAM_UPDATE_INTERVAL_MS", { STREAM_UPDATE_INTERVAL_MS: "0" })
      yield* failsNaming("STREAM_HEARTBEAT_MS", { STREAM_HEARTBEAT_MS: "99" })
      yield* failsNaming("DEFINITIONS_RESYNC_MS", { DEFINITIONS_RESYNC_MS: "99" })
      expect((yield* load({ FLUSH_RETRIES: "0" })).flushRetries).toBe(0)
    })
  )

  it.effect("rejects a headers deadline past the whole request's, naming both", () =>
    Effect.gen(function* () {
      const env = { HEADERS_TIMEOUT_MS: "5000", REQUEST_TIMEOUT_MS: "4000" }
      yield* failsNaming("HEADERS_TIMEOUT_MS", env)
      yield* failsNaming("REQUEST_TIMEOUT_MS", env)
      expect((yield* load({ HEADERS_TIMEOUT_MS: "4000", REQUEST_TIMEOUT_MS: "4000" })).headersTimeoutMs).toBe(4000)
    })
  )

  it.effect("the README's configuration table lists every variable, with the default the app uses", () =>
    Effect.gen(function* () {
      const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8")
      const section = readme.slice(
        readme.indexOf("## Configuration"),
        readme.indexOf("\n## ", readme.indexOf("## Configuration") + 3)
      )
      const rows = new Map<string, string>()
      for (const line of section.split("\n")) {
        const cells = /^\|\s*`([A-Z_]+)`\s*\|\s*(.*?)\s*\|/.exec(line)
        if (cells !== null) rows.set(cells[1]!, cells[2]!)
      }
      expect([...rows.keys()].sort()).toEqual([...VARIABLES].sort())
      // Each variable's default: set the variable alone to another value, find the one setting that changes, and
      // compare what it holds by default with the table.
      const defaults: Record<string, unknown> = yield* load({})
      const other: Record<string, string> = {
        HOST: "127.0.0.2",
        POLL_STAGE: "redis",
        REDIS_URL: "redis://10.0.0.9:6379",
        REDIS_NODES: "redis://10.0.0.9:7000",
        REDIS_NODES_NEXT: "redis://10.0.0.9:7000,redis://10.0.0.9:7001",
        JOURNAL_DIR: "/tmp/elsewhere",
        RATE_LIMIT: "off",
        LOG_FORMAT: "logfmt",
        ACCESS_LOG_SAMPLE: "0.5",
        REDIS_CLUSTER: "redis://10.0.0.9:7100",
        REDIS_WAIT_REPLICAS: "2"
      }
      for (const [name, documented] of rows) {
        const plain = documented.replace(/`/g, "")
        const changedTo = other[name] ?? String(Number(plain) + 1)
        const changed: Record<string, unknown> = yield* load({ [name]: changedTo })
        const fields = Object.keys(defaults).filter((k) => JSON.stringify(defaults[k]) !== JSON.stringify(changed[k]))
        expect(fields, name).toHaveLength(1)
        const value = defaults[fields[0]!]
        const shown = Option.isOption(value)
          ? Option.match(value, { onNone: () => "unset", onSome: String })
          : Array.isArray(value)
            ? value.map((n: { url: string }) => n.url).join(",")
            : String(value)
        expect(plain.startsWith(shown), `${name}: README says ${documented}, the app uses ${shown}`).toBe(true)
      }
    })
  )

  it.effect("the start-up line shows every setting under its variable's name", () =>
    Effect.gen(function* () {
      const line = describeConfig(
        yield* load({ JOURNAL_DIR: "/var/lib/livepoll", REDIS_NODES: "east=redis://10.0.0.1:6380" })
      )
      for (const name of VARIABLES) expect(line).toMatch(new RegExp(`(^| )${name.toLowerCase()}=\\S+`))
      expect(line).toContain("journal_dir=/var/lib/livepoll")
      expect(line).toContain("redis_nodes=east=redis://10.0.0.1:6380")
      expect(describeConfig(yield* load({}))).toContain("journal_dir=off")
    })
  )

  it.effect("names every variable it reads in VARIABLES", () =>
    Effect.gen(function* () {
      // A variable missing from the list would leak from a test's shell into the apps it starts.
      const read = new Set<string>()
      const recording = ConfigProvider.fromJson({}).pipe(ConfigProvider.mapInputPath((name) => (read.add(name), name)))
      yield* Effect.withConfigProvider(AppConfig, recording)
      expect([...read].sort()).toEqual([...VARIABLES].sort())
    })
  )

  it.effect("rejects an unparsable REDIS_URL, naming it", () =>
    Effect.gen(function* () {
      yield* failsNaming("REDIS_URL", { REDIS_URL: "not a url" })
      yield* failsNaming("REDIS_URL", { REDIS_URL: "http://127.0.0.1:6390" })
    })
  )

  it.effect("rejects REDIS_NODES that name a node twice, naming the variable and the node", () =>
    Effect.gen(function* () {
      const env = { REDIS_NODES: "a=redis://127.0.0.1:6390,a=redis://127.0.0.1:6391" }
      yield* failsNaming("REDIS_NODES", env)
      expect(String(yield* Effect.flip(load(env)))).toMatch(/\ba\b.*twice/)
      // Two unnamed nodes on the same port get the same default name.
      yield* failsNaming("REDIS_NODES", { REDIS_NODES: "redis://10.0.0.1:6390,redis://10.0.0.2:6390" })
    })
  )

  it.effect("rejects REDIS_NODES with an empty entry or an unparsable URL, naming the variable", () =>
    Effect.gen(function* () {
      yield* failsNaming("REDIS_NODES", { REDIS_NODES: "redis://127.0.0.1:6390," })
      yield* failsNaming("REDIS_NODES", { REDIS_NODES: "x=not a url" })
    })
  )
})

describe("parseRedisNodes", () => {
  it("keeps a URL whose userinfo contains '=' whole", () => {
    expect(parseRedisNodes("redis://u:a=b@127.0.0.1:6390")).toEqual(
      Either.right([{ name: "redis_6390", url: "redis://u:a=b@127.0.0.1:6390" }])
    )
  })

  it("rejects a node name outside the identifier charset", () => {
    expect(Either.isLeft(parseRedisNodes("bad name=redis://127.0.0.1:6390"))).toBe(true)
  })
})

describe("effectiveLimits", () => {
  const configured = (maxConnections: number, maxStreams: number) => ({ maxConnections, maxStreams })

  it("leaves a tenth of the connections (at least one) to other requests than streams", () => {
    expect(effectiveLimits(configured(10_000, 9_000), undefined)).toMatchObject({ connections: 10_000, streams: 9_000 })
    expect(effectiveLimits(configured(10_000, 10_000), undefined)).toMatchObject({
      connections: 10_000,
      streams: 9_000
    })
    expect(effectiveLimits(configured(10, 10_000), undefined)).toMatchObject({ connections: 10, streams: 9 })
    expect(effectiveLimits(configured(5, 2), undefined)).toMatchObject({ connections: 5, streams: 2 })
    expect(effectiveLimits(configured(1, 10), undefined)).toMatchObject({ connections: 1, streams: 0 })
  })

  it("keeps connections below the open-file limit, with room for the app's own files", () => {
    // A default `ulimit -n` of 1024: 128 kept back; the stream cap of 10,000 the app used to have is far above.
    expect(effectiveLimits(configured(10_000, 10_000), 1024)).toEqual({ connections: 896, streams: 806, refusing: 32 })
    // A small limit keeps a quarter back.
    expect(effectiveLimits(configured(10_000, 9_000), 200)).toEqual({ connections: 150, streams: 135, refusing: 25 })
    // A cap below the limit is kept as configured.
    expect(effectiveLimits(configured(100, 50), 20_000)).toMatchObject({ connections: 100, streams: 50 })
    expect(effectiveLimits(configured(10_000, 9_000), 4)).toMatchObject({ connections: 3, streams: 2 })
  })

  it("never lets streams take every connection, whatever the inputs", () => {
    for (const limit of [undefined, 2, 16, 1024, 65_536]) {
      for (const [connections, streams] of [
        [1, 0],
        [1, 1],
        [2, 2],
        [64, 1000],
        [100_000, 100_000]
      ] as const) {
        const effective = effectiveLimits(configured(connections, streams), limit)
        expect(effective.connections).toBeGreaterThanOrEqual(1)
        expect(effective.connections).toBeLessThanOrEqual(connections)
        if (limit !== undefined) expect(effective.connections).toBeLessThan(limit)
        expect(effective.streams).toBeLessThan(effective.connections)
        expect(effective.streams).toBeLessThanOrEqual(streams)
      }
    }
  })
})

describe("parseOpenFileLimit", () => {
  const limits = (soft: string, hard: string) =>
    [
      "Limit                     Soft Limit           Hard Limit           Units     ",
      "Max processes             127431               127431               processes ",
      `Max open files            ${soft.padEnd(21)}${hard.padEnd(21)}files     `,
      "Max locked memory         8388608              8388608              bytes     "
    ].join("\n")

  it("reads the soft limit of /proc/self/limits", () => {
    expect(parseOpenFileLimit(limits("1024", "524288"))).toBe(1024)
  })

  it("has no limit when it is unlimited or not stated", () => {
    expect(parseOpenFileLimit(limits("unlimited", "unlimited"))).toBeUndefined()
    expect(parseOpenFileLimit("")).toBeUndefined()
  })
})
