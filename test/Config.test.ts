import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Option } from "effect"
import { AppConfig, parseRedisNodes } from "../src/Config.js"

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
    })
  )

  it.effect("reads every variable", () =>
    Effect.gen(function* () {
      const config = yield* load({
        PORT: "9123",
        HOST: "127.0.0.1",
        POLL_STAGE: "sharded",
        REDIS_URL: "redis://cache.internal:6390/2",
        REDIS_NODES: "east=redis://10.0.0.1:6380, west=redis://10.0.0.2:6381",
        CACHE_TTL_MS: "250",
        FLUSH_INTERVAL_MS: "300",
        JOURNAL_DIR: "/var/lib/livepoll"
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
        cacheTtlMs: 250,
        flushIntervalMs: 300,
        journalDir: Option.some("/var/lib/livepoll")
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
