import { Effect, Layer, Runtime } from "effect"
import type { PollId } from "../Domain.js"
import { Feed, makeLocal } from "../Feed.js"
import * as RedisClient from "../RedisClient.js"
import * as ClusterClient from "../RedisClient/Cluster.js"
import { REDIS_CLUSTER } from "../VoteStore/Cluster.js"
import { SIGNAL_INTERVAL_MS } from "./Redis.js"

/**
 * One sharded channel per group of polls, not per poll: an instance holds GROUPS subscriptions however many polls
 * its streams watch, and each message names the polls that changed.
 */
export const channel = (group: number) => `livepoll:changed:${ClusterClient.groupTag(group)}`
/** Past this many polls of one group in one interval a message says "*": re-read every watched poll. */
const MAX_IDS_PER_SIGNAL = 1000

/**
 * Change signals over sharded pub/sub (`SPUBLISH`, served by the master of each group's channel): like `Feed/Redis.ts`,
 * one message per group per SIGNAL_INTERVAL_MS listing the polls that changed, heard by every instance. A group whose
 * channel has no reachable master loses its signals meanwhile; the other groups' go on.
 */
export const layer = (options: ClusterClient.ClusterClientOptions): Layer.Layer<Feed> =>
  Layer.scoped(
    Feed,
    Effect.gen(function* () {
      const local = makeLocal()
      const runFork = Runtime.runFork(yield* Effect.runtime<never>())
      const client = yield* ClusterClient.acquire(options, { role: "change signals" })
      const subscriber = yield* ClusterClient.acquire(options, { role: "change signals (pub/sub)", subscriber: true })
      const call = RedisClient.caller({ name: REDIS_CLUSTER, commandTimeoutMs: RedisClient.commandTimeoutOf(options) })
      const ours = new Set(ClusterClient.allGroups.map(channel))
      subscriber.on("smessage", (from: string, message: string) => {
        if (!ours.has(from)) return
        if (message === "*") local.notifyAll()
        else message.split(" ").forEach((id) => local.notify(id as PollId))
      })
      // Subscribed before this instance serves, so no signal meant for its first streams is missed.
      yield* ClusterClient.subscribe(
        subscriber,
        ClusterClient.allGroups.map((group) => [channel(group)])
      )
      const pending = ClusterClient.allGroups.map(() => new Set<PollId>())
      const timer = setInterval(() => {
        for (const [group, polls] of pending.entries()) {
          if (polls.size === 0) continue
          const message = polls.size > MAX_IDS_PER_SIGNAL ? "*" : [...polls].join(" ")
          polls.clear()
          runFork(Effect.ignore(call("publish", () => client.spublish(channel(group), message))))
        }
      }, SIGNAL_INTERVAL_MS)
      yield* Effect.addFinalizer(() => Effect.sync(() => clearInterval(timer)))
      const changed = (pollId: PollId) =>
        Effect.sync(() => {
          local.notify(pollId)
          const polls = pending[ClusterClient.groupOf(pollId)]!
          // One past the limit is enough to send "*"; the set never grows further.
          if (polls.size <= MAX_IDS_PER_SIGNAL) polls.add(pollId)
        })
      return { changed, local: local.signal, subscribe: local.subscribe }
    })
  )
