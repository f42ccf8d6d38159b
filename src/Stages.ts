import { ConfigError, Duration, Effect, Layer, Option } from "effect"
import type { AppConfig, Stage } from "./Config.js"
import type { RedisNode } from "./RedisClient.js"
import { AppConfig as AppConfigSpec, describe as describeConfig, rateLimitsOf } from "./Config.js"
import * as Feed from "./Feed.js"
import * as FeedCluster from "./Feed/Cluster.js"
import * as FeedRedis from "./Feed/Redis.js"
import * as Journal from "./VoteStore/Journal.js"
import * as Polls from "./Polls.js"
import * as PollsCached from "./Polls/Cached.js"
import * as PollsCluster from "./Polls/Cluster.js"
import * as PollsRedis from "./Polls/Redis.js"
import * as RateLimit from "./RateLimit.js"
import * as RateLimitRedis from "./RateLimit/Redis.js"
import { asInner, InnerStore, layerMemory, VoteStore } from "./VoteStore.js"
import * as Cached from "./VoteStore/Cached.js"
import * as ClusterStore from "./VoteStore/Cluster.js"
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
/** The shards of the next ring (`REDIS_NODES_NEXT`), while an online reshard may be moving polls to them. */
const nextShards = (c: AppConfig): ReadonlyArray<RedisNode> | undefined =>
  Option.getOrUndefined(
    Option.map(c.redisNodesNext, (nodes) => nodes.map((n) => ({ ...n, commandTimeoutMs: c.redisCommandTimeoutMs })))
  )
/** The ring's store, or with a next ring the store that finds each moving poll wherever the reshard has it. */
const ring = (c: AppConfig): Layer.Layer<VoteStore> => {
  const next = nextShards(c)
  return next === undefined ? Sharded.layerRedis(shards(c)) : Sharded.layerRedisGrowing(shards(c), next)
}

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
const onRedis = (
  c: AppConfig,
  nodes: ReadonlyArray<RedisNode>,
  store: Layer.Layer<VoteStore, never, Feed.Feed>,
  next?: ReadonlyArray<RedisNode>
) =>
  Layer.merge(
    store,
    definitions(
      c,
      PollsRedis.layer(nodes, c.maxPolls, {
        resyncMs: c.definitionsResyncMs,
        ...(next === undefined ? {} : { next })
      })
    )
  ).pipe(Layer.provideMerge(FeedRedis.layer(nodes)))

/** The cluster stage's seed nodes (AppConfig makes sure there are some), with the configured command time-out. */
const onCluster = (c: AppConfig) => ({
  seeds: Option.getOrElse(c.redisCluster, () => []),
  commandTimeoutMs: c.redisCommandTimeoutMs
})

/** The stages of the design, each one layer composition. Reading a row left to right reads the stack outside-in. */
export const compositions: Record<Stage, (c: AppConfig) => Layer.Layer<Services>> = {
  memory: (c) =>
    Layer.merge(base(layerMemory), definitions(c, Polls.layerMemory(c.maxPolls))).pipe(
      Layer.provideMerge(Feed.layerLocal)
    ),
  redis: (c) => onRedis(c, single(c), base(RedisStore.layer(single(c)[0]!))),
  cached: (c) => onRedis(c, single(c), over(cache(c), base(RedisStore.layer(single(c)[0]!)))),
  batched: (c) => onRedis(c, single(c), over(buffer(c), base(RedisStore.layer(single(c)[0]!)))),
  sharded: (c) => onRedis(c, shards(c), base(ring(c)), nextShards(c)),
  // Buffer outermost so reads add this instance's pending votes to the (possibly cached) stored counts.
  full: (c) => onRedis(c, shards(c), over(buffer(c), over(cache(c), base(ring(c)))), nextShards(c)),
  // `full` on Redis Cluster: each flushed batch split per poll into its slot, confirmed once replicas hold it.
  cluster: (c) =>
    Layer.merge(
      over(
        buffer(c),
        over(
          cache(c),
          base(
            ClusterStore.layer({
              ...onCluster(c),
              waitReplicas: Option.getOrElse(c.redisWaitReplicas, () => "auto" as const)
            })
          )
        )
      ),
      definitions(c, PollsCluster.layer({ ...onCluster(c), resyncMs: c.definitionsResyncMs }, c.maxPolls))
    ).pipe(Layer.provideMerge(FeedCluster.layer(onCluster(c))))
}

/**
 * Where the rate limits keep count: on the stage's Redis, so every instance shares them; in process for the memory
 * stage (one instance, nothing to share with). When they are off, nothing asks.
 */
const limiter = (c: AppConfig): Layer.Layer<RateLimit.RateLimiter> => {
  if (rateLimitsOf(c) === undefined || c.stage === "memory") return RateLimit.layerMemory
  if (c.stage === "cluster") return RateLimitRedis.layerCluster(onCluster(c))
  return RateLimitRedis.layer(c.stage === "sharded" || c.stage === "full" ? shards(c) : single(c))
}

/** The services chosen by `POLL_STAGE`, and the rate limiter beside them. */
export const layer: Layer.Layer<Services | RateLimit.RateLimiter, ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.gen(function* () {
    const config = yield* AppConfigSpec
    yield* Effect.logInfo(`livepoll starting: ${describeConfig(config)}`)
    return Layer.merge(compositions[config.stage](config), limiter(config))
  })
)
