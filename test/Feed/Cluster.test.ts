import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { PollId } from "../../src/Domain.js"
import * as Feed from "../../src/Feed.js"
import * as FeedCluster from "../../src/Feed/Cluster.js"
import { SIGNAL_INTERVAL_MS } from "../../src/Feed/Redis.js"
import * as ClusterClient from "../../src/RedisClient/Cluster.js"
import { slotOf } from "../../src/VoteStore/Cluster.js"
import { type RedisCluster, startCluster } from "../support/cluster.js"
import { counter, feedContract, heardOver as heardOverStore } from "../support/feed.js"
import { eventually } from "../support/wait.js"

/**
 * The `Feed` contract over sharded pub/sub on a Redis Cluster (as test/Feed.test.ts runs it over the other backends),
 * and two instances over one cluster: every group's channel, and a master that goes down. Pub/sub is real I/O: a test
 * that needs "nothing came" first sends a signal of its own and waits until it is heard, so that whatever was sent
 * before it on that channel has arrived too. 3 masters without replicas, without full coverage.
 */

let cluster: RedisCluster

beforeAll(async () => {
  cluster = await startCluster({ replicas: 0, requireFullCoverage: false })
})

afterAll(async () => {
  await cluster?.stop()
})

const clusterLayer = () =>
  Layer.unwrapEffect(Effect.sync(() => FeedCluster.layer({ seeds: cluster.seeds, commandTimeoutMs: 1000 })))
const instance = Effect.map(Layer.build(clusterLayer()), (context) => Context.get(context, Feed.Feed))

let unique = 0
const pollId = (name: string) => PollId.make(`${name}-${process.pid}-${unique++}`)
/** The first new poll id of `group`. */
const pollIn = (group: number, name: string) => {
  for (;;) {
    const id = pollId(name)
    if (ClusterClient.groupOf(id) === group) return id
  }
}

/**
 * Signals a poll of `group` on `sender` until `receiver` hears it over the cluster: then every signal `sender` sent
 * before on that group's channel has reached `receiver`.
 */
const heardOver = (sender: Feed.FeedShape, receiver: Feed.FeedShape, group: number, timeoutMs = 5000) =>
  heardOverStore(sender, receiver, {
    newPoll: () => pollIn(group, "heard"),
    intervalMs: SIGNAL_INTERVAL_MS / 2,
    what: `a signal of group ${group} heard over the cluster`,
    timeoutMs
  })

// Another poll of the same group as the one named: its channel carries both, and only the one named runs.
it.layer(clusterLayer())("Feed over a Redis Cluster", (it) =>
  feedContract(it, {
    newPoll: pollId,
    neighbour: (id, name) => pollIn(ClusterClient.groupOf(id), name),
    settle: (feed, id) => heardOver(feed, feed, ClusterClient.groupOf(id)),
    echoes: true
  })
)

describe("Feed over a Redis Cluster, two instances", () => {
  it.scopedLive("changed on one wakes the poll's listeners on the other, for polls of every group", () =>
    Effect.gen(function* () {
      const [sender, receiver] = yield* Effect.all([instance, instance])
      const polls = ClusterClient.allGroups.map((group) => pollIn(group, "across"))
      // A poll of each group that nobody signals: its listener on the other instance must not run.
      const quiet = ClusterClient.allGroups.map((group) => pollIn(group, "quiet"))
      const heard = polls.map(() => counter())
      const unheard = quiet.map(() => counter())
      // What travels on each group's channel, as a client of the channel's own master sees it.
      const seen = new Map<string, Array<string>>()
      yield* Effect.forEach(ClusterClient.allGroups, (group) =>
        Effect.promise(async () => {
          const raw = cluster.node(await cluster.masterOf(FeedCluster.channel(group)))
          raw.on("smessage", (channel: string, message: string) =>
            seen.set(channel, [...(seen.get(channel) ?? []), ...message.split(" ")])
          )
          await raw.ssubscribe(FeedCluster.channel(group))
        })
      )
      for (const [i, id] of polls.entries()) yield* receiver.subscribe(id, heard[i]!.listener)
      for (const [i, id] of quiet.entries()) yield* receiver.subscribe(id, unheard[i]!.listener)
      // Several signals of one interval go out as one message per group, naming each poll.
      for (const id of polls) yield* sender.changed(id)
      yield* Effect.promise(() =>
        eventually(async () => (heard.every((h) => h.calls > 0) ? true : undefined), {
          what: "every group's signal on the other instance"
        })
      )
      for (const group of ClusterClient.allGroups) yield* heardOver(sender, receiver, group)
      expect(heard.map((h) => h.calls)).toEqual(polls.map(() => 1))
      expect(unheard.map((h) => h.calls)).toEqual(quiet.map(() => 0))
      // One channel per group, each naming the polls of its group only.
      for (const [group, id] of polls.entries()) {
        const ids = seen.get(FeedCluster.channel(group)) ?? []
        expect(ids).toContain(id)
        expect(ids.every((named) => ClusterClient.groupOf(named) === group)).toBe(true)
      }
    })
  )

  it.scopedLive("local on one wakes its own listeners only", () =>
    Effect.gen(function* () {
      const [sender, receiver] = yield* Effect.all([instance, instance])
      const id = pollId("local-only")
      const [here, there] = [counter(), counter()]
      yield* sender.subscribe(id, here.listener)
      yield* receiver.subscribe(id, there.listener)
      yield* sender.local(id)
      yield* heardOver(sender, receiver, ClusterClient.groupOf(id))
      expect(here.calls).toBe(1)
      expect(there.calls).toBe(0)
    })
  )

  it.scopedLive("a master down silences only the groups whose channel it serves, until it is back", () =>
    Effect.gen(function* () {
      const [sender, receiver] = yield* Effect.all([instance, instance])
      const master = cluster.nodes.find((n) => n.role === "master")!
      const served = (group: number) => {
        const slot = slotOf(`g${group}`)
        return master.slots.some(([first, last]) => first <= slot && slot <= last)
      }
      const silenced = ClusterClient.allGroups.filter(served)
      const spared = ClusterClient.allGroups.filter((group) => !served(group))
      expect(silenced.length).toBeGreaterThan(0)
      expect(spared.length).toBeGreaterThan(0)

      yield* Effect.promise(() => cluster.kill(master.port))
      yield* Effect.addFinalizer(() => Effect.promise(() => cluster.start(master.port)))
      // A publish that cannot be made is dropped, and changed still wakes this instance's own streams at once.
      const mine = counter()
      const id = pollIn(silenced[0]!, "silenced")
      yield* sender.subscribe(id, mine.listener)
      yield* sender.changed(id)
      expect(mine.calls).toBe(1)
      for (const group of spared) yield* heardOver(sender, receiver, group)

      // Back with its slots: ioredis subscribes both instances again, and those groups' signals arrive again.
      yield* Effect.promise(() => cluster.start(master.port))
      for (const group of silenced) yield* heardOver(sender, receiver, group, 15_000)
    })
  )
})
