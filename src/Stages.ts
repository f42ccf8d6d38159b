import { ConfigError, Duration, Effect, Layer, Option } from "effect"
import type { AppConfig, Stage } from "./Config.js"
import { AppConfig as AppConfigSpec } from "./Config.js"
import * as Journal from "./Journal.js"
import { asInner, InnerStore, layerMemory, VoteStore } from "./VoteStore.js"
import * as Cached from "./VoteStore/Cached.js"
import * as RedisStore from "./VoteStore/Redis.js"
import * as Sharded from "./VoteStore/Sharded.js"
import * as WriteBehind from "./VoteStore/WriteBehind.js"

/** Stack a decorator (cache, buffer) on top of the store it wraps. */
const over = <E, R>(
  decorator: Layer.Layer<VoteStore, never, InnerStore>,
  inner: Layer.Layer<VoteStore, E, R>
): Layer.Layer<VoteStore, E, R> => decorator.pipe(Layer.provide(asInner(inner)))

const single = (c: AppConfig) => RedisStore.layer({ url: c.redisUrl, name: "redis" })
const shards = (c: AppConfig) => Sharded.layerRedis(c.redisNodes)
const cache = (c: AppConfig) => Cached.layer({ ttl: Duration.millis(c.cacheTtlMs) })
const journal = (c: AppConfig) =>
  Option.match(c.journalDir, { onNone: () => Journal.layerNone, onSome: Journal.layerFile })
const buffer = (c: AppConfig) =>
  WriteBehind.layer({ flushInterval: Duration.millis(c.flushIntervalMs) }).pipe(Layer.provide(journal(c)))

/** The six stages of the design, each one layer composition. Reading a row top-down reads the stack outside-in. */
export const compositions: Record<Stage, (c: AppConfig) => Layer.Layer<VoteStore>> = {
  memory: () => layerMemory,
  redis: single,
  cached: (c) => over(cache(c), single(c)),
  batched: (c) => over(buffer(c), single(c)),
  sharded: shards,
  // Buffer outermost so reads add this instance's pending votes to the (possibly cached) stored counts.
  full: (c) => over(buffer(c), over(cache(c), shards(c)))
}

const describe = (c: AppConfig) =>
  [
    `stage=${c.stage}`,
    `port=${c.port}`,
    ...(["redis", "cached", "batched"].includes(c.stage) ? [`redis=${c.redisUrl}`] : []),
    ...(["sharded", "full"].includes(c.stage)
      ? [`nodes=${c.redisNodes.map((n) => `${n.name}=${n.url}`).join(",")}`]
      : []),
    ...(["cached", "full"].includes(c.stage) ? [`cache_ttl_ms=${c.cacheTtlMs}`] : []),
    ...(["batched", "full"].includes(c.stage) ? [`flush_interval_ms=${c.flushIntervalMs}`] : []),
    ...(["batched", "full"].includes(c.stage) ? [`journal=${Option.getOrElse(c.journalDir, () => "off")}`] : [])
  ].join(" ")

/** The store chosen by `POLL_STAGE`. */
export const layer: Layer.Layer<VoteStore, ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.gen(function* () {
    const config = yield* AppConfigSpec
    yield* Effect.logInfo(`livepoll starting: ${describe(config)}`)
    return compositions[config.stage](config)
  })
)
