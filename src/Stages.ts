import { ConfigError, Duration, Effect, Layer, Option } from "effect"
import type { AppConfig, Stage } from "./Config.js"
import type { RedisNode } from "./RedisClient.js"
import { AppConfig as AppConfigSpec, describe as describeConfig } from "./Config.js"
import * as Feed from "./Feed.js"
import * as FeedRedis from "./Feed/Redis.js"
import * as Journal from "./VoteStore/Journal.js"
import * as Polls from "./Polls.js"
import * as PollsCached from "./Polls/Cached.js"
import * as PollsRedis from "./Polls/Redis.js"
import { asInner, InnerStore, layerMemory, VoteStore } from "./VoteStore.js"
import * as Cached from "./VoteStore/Cached.js"
import * as Notifying from "./VoteStore/Notifying.js"
import * as RedisStore from "./VoteStore/Redis.js"
import * as Sharded from "./VoteStore/Sharded.js"
import * as WriteBehind from "./VoteStore/WriteBehind.js"

/** Stack a decorator (cache, buffer, change signals) on top of the store it wraps. */
const over = <E, R, R2>(
  decorator: Layer.Layer<VoteStore, never, R2>,
  inner: Layer.Layer<VoteStore, E, R>
): Layer.Layer<VoteStore, E, R | Exclude<R2, InnerStore>> => decorator.pipe(Layer.provide(asInner(inner)))

type Services = VoteStore | Polls.Polls | Feed.Feed

/** The node of the single-Redis stages, and the shards of the others, each with the configured command time-out. */
const single = (c: AppConfig): ReadonlyArray<RedisNode> => [
  { url: c.redisUrl, name: "redis", commandTimeoutMs: c.redisCommandTimeoutMs }
]
const shards = (c: AppConfig): ReadonlyArray<RedisNode> =>
  c.redisNodes.map((n) => ({ ...n, commandTimeoutMs: c.redisCommandTimeoutMs }))

/** The bottom of every stack: the store itself, which signals changes to live result streams. */
const base = (store: Layer.Layer<VoteStore>) => over(Notifying.layer, store)
const cache = (c: AppConfig) => Cached.layer({ ttl: Duration.millis(c.cacheTtlMs), capacity: c.cacheMaxPolls })
const journal = (c: AppConfig) =>
  Option.match(c.journalDir, { onNone: () => Journal.layerNone, onSome: Journal.layerFile })
const buffer = (c: AppConfig) =>
  WriteBehind.layer({
    flushInterval: Duration.millis(c.flushIntervalMs),
    maxEntries: c.bufferMaxEntries,
    flushRetries: c.flushRetries,
    shutdownDeadline: Duration.millis(c.shutdownFlushMs)
  }).pipe(Layer.provide(journal(c)))

/** Poll definitions, read on every vote of a defined poll, behind a short cache, in every stage. */
const definitions = <E, R>(c: AppConfig, polls: Layer.Layer<Polls.Polls, E, R>) =>
  PollsCached.over({ ttl: Duration.millis(c.definitionsCacheTtlMs), capacity: c.cacheMaxPolls }, polls)

/** Poll definitions and change signals live on the same Redis node(s) as the counts. */
const onRedis = (c: AppConfig, nodes: ReadonlyArray<RedisNode>, store: Layer.Layer<VoteStore, never, Feed.Feed>) =>
  Layer.merge(store, definitions(c, PollsRedis.layer(nodes, c.maxPolls, { resyncMs: c.definitionsResyncMs }))).pipe(
    Layer.provideMerge(FeedRedis.layer(nodes))
  )

/** The six stages of the design, each one layer composition. Reading a row left to right reads the stack outside-in. */
export const compositions: Record<Stage, (c: AppConfig) => Layer.Layer<Services>> = {
  memory: (c) =>
    Layer.merge(base(layerMemory), definitions(c, Polls.layerMemory(c.maxPolls))).pipe(
      Layer.provideMerge(Feed.layerLocal)
    ),
  redis: (c) => onRedis(c, single(c), base(RedisStore.layer(single(c)[0]!))),
  cached: (c) => onRedis(c, single(c), over(cache(c), base(RedisStore.layer(single(c)[0]!)))),
  batched: (c) => onRedis(c, single(c), over(buffer(c), base(RedisStore.layer(single(c)[0]!)))),
  sharded: (c) => onRedis(c, shards(c), base(Sharded.layerRedis(shards(c)))),
  // Buffer outermost so reads add this instance's pending votes to the (possibly cached) stored counts.
  full: (c) => onRedis(c, shards(c), over(buffer(c), over(cache(c), base(Sharded.layerRedis(shards(c))))))
}

/** The services chosen by `POLL_STAGE`. */
export const layer: Layer.Layer<Services, ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.gen(function* () {
    const config = yield* AppConfigSpec
    yield* Effect.logInfo(`livepoll starting: ${describeConfig(config)}`)
    return compositions[config.stage](config)
  })
)
