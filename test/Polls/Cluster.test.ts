import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option } from "effect"
import { DefinitionLost, OptionId, type PollDefinition, PollId, StoreUnavailable } from "../../src/Domain.js"
import * as Polls from "../../src/Polls.js"
import * as PollsCached from "../../src/Polls/Cached.js"
import * as PollsCluster from "../../src/Polls/Cluster.js"
import * as ClusterClient from "../../src/RedisClient/Cluster.js"
import { slotOf } from "../../src/VoteStore/Cluster.js"
import { type RedisCluster, startCluster } from "../support/cluster.js"
import { failsInTime, promise, untilSucceeds } from "../support/effect.js"
import { eventually } from "../support/wait.js"

/**
 * The cluster backend beyond the `Polls` contract (which test/Polls.test.ts runs over it): where its keys live, what
 * two instances over one cluster see of each other, the repair of a create cut short, and a master that goes down.
 * 3 masters without replicas, and without full coverage, so the slots of the other masters answer while one is down;
 * and 3 masters with a replica each, for a failover.
 */

let cluster: RedisCluster
let replicated: RedisCluster

beforeAll(async () => {
  ;[cluster, replicated] = await Promise.all([
    startCluster({ replicas: 0, requireFullCoverage: false }),
    startCluster({ requireFullCoverage: false })
  ])
})

afterAll(async () => {
  await Promise.all([cluster?.stop(), replicated?.stop()])
})

const ROOMY = 10_000
/** Long enough that only an announcement drops a cached definition while a test runs. */
const CACHE = { ttl: "1 hour", capacity: 1000 } as const

/** One instance of the app's definitions over the cluster, as staged (behind the cache), in the test's scope. */
const instance = (resyncMs?: number, on: () => RedisCluster = () => cluster) =>
  Effect.map(
    Layer.build(
      PollsCached.over(
        CACHE,
        PollsCluster.layer({ seeds: on().seeds, commandTimeoutMs: 1000, ...(resyncMs ? { resyncMs } : {}) }, ROOMY)
      )
    ),
    (context) => Context.get(context, Polls.Polls)
  )

let unique = 0
const uniqueId = (name: string) => `${name}-${process.pid}-${unique++}`

const definition = (id: string, createdAt = new Date()): PollDefinition =>
  Polls.define(
    {
      question: "Tea or coffee?",
      options: [
        { id: OptionId.make("tea"), label: "Tea" },
        { id: OptionId.make("coffee"), label: "Coffee" }
      ],
      one_vote_per_voter: false
    },
    PollId.make(id),
    createdAt
  )

const masterOfSlot = (slot: number) =>
  cluster.nodes.find((n) => n.role === "master" && n.slots.some(([first, last]) => first <= slot && slot <= last))!.port
const masterOfPoll = (id: string) => masterOfSlot(slotOf(id))
/** The master of a group's keys and channels: the slot of its tag, `{g<n>}`. */
const masterOfGroup = (group: number) => masterOfSlot(slotOf(`g${group}`))

/** The first id with this prefix that `holds`. */
const idWhere = (prefix: string, holds: (id: string) => boolean) => {
  for (let i = 0; ; i++) {
    const id = uniqueId(`${prefix}${i}`)
    if (holds(id)) return PollId.make(id)
  }
}

/** Sharded subscribers of a channel on its master, as that master counts them. */
const subscribersOf = (channel: string, port: number, on: RedisCluster = cluster) =>
  promise(async () => {
    const [, count] = (await on.node(port).call("PUBSUB", "SHARDNUMSUB", channel)) as [string, number]
    return Number(count)
  })

describe("Polls over a Redis Cluster", () => {
  it.scopedLive("keeps a definition in its poll's slot and its index entries in its group's slot", () =>
    Effect.gen(function* () {
      const polls = yield* instance()
      const raw = cluster.client()
      // A group is a range of the polls' slots, and its keys share the slot of its tag, whatever their names.
      for (const id of ["100", "__proto__", "constructor", "a.b-c_D"]) {
        const slot = yield* promise(() => cluster.slotOf(PollsCluster.definitionKey(id)))
        expect(ClusterClient.groupOf(id)).toBe(Math.floor((slot * ClusterClient.GROUPS) / 16_384))
      }
      const tagSlots = yield* Effect.forEach(ClusterClient.allGroups, (group) =>
        Effect.all([
          promise(() => cluster.slotOf(PollsCluster.indexKey(group))),
          promise(() => cluster.slotOf(PollsCluster.createdKey(group))),
          promise(() => cluster.slotOf(PollsCluster.createdChannel(group)))
        ])
      )
      expect(tagSlots.every(([index, created, channel]) => index === created && created === channel)).toBe(true)
      // Not one hot key: the groups' keys are spread over the masters.
      expect(new Set(ClusterClient.allGroups.map(masterOfGroup)).size).toBe(3)

      const poll = definition(uniqueId("placed"))
      const organiser = Polls.organiserKey()
      yield* polls.create(poll, organiser.hash)
      expect(JSON.parse((yield* promise(() => raw.get(PollsCluster.definitionKey(poll.id))))!)).toEqual(poll)
      expect(yield* promise(() => raw.get(PollsCluster.organiserKey(poll.id)))).toBe(organiser.hash)
      const group = ClusterClient.groupOf(poll.id)
      for (const other of ClusterClient.allGroups) {
        const members = yield* promise(() => raw.smembers(PollsCluster.indexKey(other)))
        const listed = yield* promise(() => raw.zrange(PollsCluster.createdKey(other), 0, -1))
        expect(members.includes(poll.id)).toBe(other === group)
        expect(listed.includes(Polls.positionKey(Polls.positionOf(poll)))).toBe(other === group)
      }
    })
  )

  it.scopedLive("a second instance knows a poll is defined as soon as create answers, in every group", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([instance(), instance()])
      // One poll per group: each announcement and its acks go over that group's channels.
      const ids = ClusterClient.allGroups.map((group) =>
        idWhere(`announced-g${group}-`, (id) => ClusterClient.groupOf(id) === group)
      )
      const keys = new Map<PollId, string>()
      const created = new Map<PollId, PollDefinition>()
      for (const id of ids) {
        expect(b.mayBeDefined(id)).toBe(false)
        const organiser = Polls.organiserKey()
        keys.set(id, organiser.key)
        created.set(id, yield* a.create(definition(id), organiser.hash))
        // At once: create waited until every instance confirmed the announcement.
        expect(b.mayBeDefined(id)).toBe(true)
      }
      for (const id of ids) expect(yield* b.get(id)).toEqual(Option.some(created.get(id)))
      // Both list what either created, newest first.
      const page = yield* b.list({ status: "all", limit: 100, now: Date.now() })
      expect(page.polls.map((p) => p.id).filter((id) => keys.has(id))).toHaveLength(ids.length)

      // Either instance closes a poll with the key the other was given, and the other drops its cached copy when it
      // hears of it (its cache would keep the open one for an hour).
      const id = ids[5]!
      expect(Option.getOrThrow(yield* a.get(id)).closed).toBe(false)
      expect((yield* b.close(id, keys.get(id))).closed).toBe(true)
      yield* promise(() =>
        eventually(async () => (Option.getOrThrow(await Effect.runPromise(a.get(id))).closed ? true : undefined), {
          what: "the close heard by the other instance"
        })
      )

      // Ids that spell Object.prototype members are ids like any other.
      const proto = PollId.make("__proto__")
      const organiser = Polls.organiserKey()
      yield* a.create(definition(proto), organiser.hash)
      expect(b.mayBeDefined(proto)).toBe(true)
      expect((yield* b.close(proto, organiser.key)).closed).toBe(true)
    })
  )

  it.scopedLive("a definition deleted under a poll both saw defined is DefinitionLost on both, not None", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([instance(), instance()])
      const id = PollId.make(uniqueId("lost"))
      yield* a.create(definition(id), Polls.organiserKey().hash)
      yield* promise(() => cluster.client().del(PollsCluster.definitionKey(id)))
      for (const polls of [a, b]) {
        expect(yield* Effect.flip(polls.getExact(id))).toBeInstanceOf(DefinitionLost)
        expect(yield* Effect.flip(polls.get(id))).toBeInstanceOf(DefinitionLost)
      }
    })
  )

  it.scopedLive("the resync indexes a definition that a create cut short left out, once it is old enough", () =>
    Effect.gen(function* () {
      const raw = cluster.client()
      // What a create that stopped after its first step leaves: a definition and its key, no index entry.
      const old = definition(uniqueId("cut-short"), new Date(Date.now() - 2 * PollsCluster.REPAIR_AGE_MS))
      const young = definition(uniqueId("under-way"))
      for (const poll of [old, young]) {
        yield* promise(() => raw.set(PollsCluster.definitionKey(poll.id), JSON.stringify(poll)))
        yield* promise(() => raw.set(PollsCluster.organiserKey(poll.id), Polls.organiserKey().hash))
      }
      const [repairing, other] = yield* Effect.all([instance(100), instance()])
      // A reader trusts the definition: found past the cache even before any index names it.
      expect(yield* other.getExact(old.id)).toEqual(Option.some(old))
      yield* promise(() =>
        eventually(async () => (other.mayBeDefined(old.id) ? true : undefined), {
          what: "the repair's announcement",
          timeoutMs: 10_000
        })
      )
      expect(repairing.mayBeDefined(old.id)).toBe(true)
      const group = ClusterClient.groupOf(old.id)
      expect(yield* promise(() => raw.sismember(PollsCluster.indexKey(group), old.id))).toBe(1)
      const page = yield* other.list({ status: "all", limit: 100, now: Date.now() })
      expect(page.polls.map((p) => p.id)).toContain(old.id)
      // The scan passed the young one too (the cluster holds a few hundred keys), and left it to its create.
      expect(repairing.mayBeDefined(young.id)).toBe(false)
      const youngGroup = ClusterClient.groupOf(young.id)
      expect(yield* promise(() => raw.sismember(PollsCluster.indexKey(youngGroup), young.id))).toBe(0)
    })
  )

  it.scopedLive("a master down: its polls answer 503 within 2 s, the other polls work, and it all comes back", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([instance(), instance()])
      const master = cluster.nodes.find((n) => n.role === "master")!.port
      const elsewhere = (id: string) =>
        masterOfPoll(id) !== master && masterOfGroup(ClusterClient.groupOf(id)) !== master
      const down = idWhere("down-", (id) => masterOfPoll(id) === master)
      const up = idWhere("up-", elsewhere)
      const keys = new Map<PollId, string>()
      for (const id of [down, up]) {
        const organiser = Polls.organiserKey()
        keys.set(id, organiser.key)
        yield* a.create(definition(id), organiser.hash)
      }

      yield* promise(() => cluster.kill(master))
      yield* Effect.addFinalizer(() => promise(() => cluster.start(master)))
      // All at once: each is given up on after ioredis has tried its redirections (about 1 s here).
      const unborn = idWhere("unborn-", (id) => masterOfPoll(id) === master)
      const refused = yield* Effect.all(
        [
          a.get(down),
          b.get(down),
          a.getExact(down),
          b.close(down, keys.get(down)),
          a.create(definition(unborn), Polls.organiserKey().hash),
          // Listing reads every group and every listed poll's definition (as the sharded stage reads every node).
          b.list({ status: "all", limit: 100, now: Date.now() })
        ].map((effect) => failsInTime<unknown, unknown>(effect)),
        { concurrency: "unbounded" }
      )
      for (const error of refused) expect(error).toBeInstanceOf(StoreUnavailable)
      // Still known to be defined: never taken for an ad-hoc poll meanwhile.
      expect([a.mayBeDefined(down), b.mayBeDefined(down)]).toEqual([true, true])

      // Polls whose slot and group are on the masters that are up go on.
      expect(Option.getOrThrow(yield* b.get(up)).id).toBe(up)
      const fresh = idWhere("fresh-", elsewhere)
      yield* a.create(definition(fresh), Polls.organiserKey().hash)
      expect(b.mayBeDefined(fresh)).toBe(true)
      expect((yield* b.close(up, keys.get(up))).closed).toBe(true)

      // A poll whose slot is up but whose group's master is down is not left half made: the definition is taken
      // back, so the 503 defined nothing.
      const unindexed = idWhere(
        "unindexed-",
        (id) => masterOfPoll(id) !== master && masterOfGroup(ClusterClient.groupOf(id)) === master
      )
      const firstTry = Polls.organiserKey()
      expect(yield* failsInTime(a.create(definition(unindexed), firstTry.hash))).toBeInstanceOf(StoreUnavailable)
      expect(yield* b.getExact(unindexed)).toEqual(Option.none())
      expect(
        yield* promise(() => cluster.node(masterOfPoll(unindexed)).exists(PollsCluster.organiserKey(unindexed)))
      ).toBe(0)
      expect(a.mayBeDefined(unindexed)).toBe(false)

      // Back with its append-only file: its polls answer again, and its groups' announcements reach both instances
      // once each has subscribed again (ioredis does that by itself).
      yield* promise(() => cluster.start(master))
      expect(Option.getOrThrow(yield* untilSucceeds(b.get(down))).id).toBe(down)
      const group = ClusterClient.groupOf(unindexed)
      yield* promise(() =>
        eventually(
          async () =>
            (await Effect.runPromise(subscribersOf(PollsCluster.createdChannel(group), master))) === 2
              ? true
              : undefined,
          { what: "both instances subscribed again", timeoutMs: 10_000 }
        )
      )
      const retry = Polls.organiserKey()
      yield* untilSucceeds(a.create(definition(unindexed), retry.hash))
      expect(b.mayBeDefined(unindexed)).toBe(true)
      expect((yield* b.close(unindexed, retry.key)).closed).toBe(true)
      expect((yield* a.close(down, keys.get(down))).closed).toBe(true)
    })
  )

  it.scopedLive(
    "starts while the cluster is down, and subscribes and reads the indexes by itself once it is back",
    () =>
      Effect.gen(function* () {
        const before = PollId.make(uniqueId("before"))
        yield* Effect.scoped(
          Effect.flatMap(instance(), (polls) => polls.create(definition(before), Polls.organiserKey().hash))
        )
        yield* Effect.forEach(cluster.ports, (port) => promise(() => cluster.kill(port)), { discard: true })
        yield* Effect.addFinalizer(() =>
          Effect.forEach(cluster.ports, (port) => promise(() => cluster.start(port)), { discard: true })
        )
        const early = yield* instance(100)
        expect(
          yield* failsInTime(early.create(definition(uniqueId("too-early")), Polls.organiserKey().hash))
        ).toBeInstanceOf(StoreUnavailable)
        expect(early.mayBeDefined(before)).toBe(false)

        yield* Effect.forEach(cluster.ports, (port) => promise(() => cluster.start(port)), { discard: true })
        yield* promise(() => cluster.waitForState("ok"))
        // The indexes, read again by its resync.
        yield* promise(() =>
          eventually(async () => (early.mayBeDefined(before) ? true : undefined), {
            what: "the resync",
            timeoutMs: 10_000
          })
        )
        // Its subscriptions, refused while the cluster was down and sent again: it confirms what another creates.
        const late = yield* instance()
        yield* promise(() =>
          eventually(
            async () => {
              for (const group of ClusterClient.allGroups) {
                const subscribers = await Effect.runPromise(
                  subscribersOf(PollsCluster.createdChannel(group), masterOfGroup(group))
                )
                if (subscribers !== 2) return undefined
              }
              return true
            },
            { what: "both instances subscribed to every group", timeoutMs: 10_000 }
          )
        )
        for (const group of [0, ClusterClient.GROUPS - 1]) {
          const id = idWhere(`after-g${group}-`, (id) => ClusterClient.groupOf(id) === group)
          yield* late.create(definition(id), Polls.organiserKey().hash)
          expect(early.mayBeDefined(id)).toBe(true)
        }
        const own = PollId.make(uniqueId("own"))
        yield* early.create(definition(own), Polls.organiserKey().hash)
        expect(late.mayBeDefined(own)).toBe(true)
      })
  )

  it.scopedLive("after a failover, a group's announcements and acks go through its new master", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([instance(undefined, () => replicated), instance(undefined, () => replicated)])
      const group = 3
      const channel = PollsCluster.createdChannel(group)
      const before = yield* promise(() => replicated.masterOf(channel))
      const replica = replicated.nodes.find((n) => n.masterPort === before)!.port
      yield* promise(() => replicated.node(replica).call("CLUSTER", "FAILOVER"))
      yield* promise(() =>
        eventually(async () => ((await replicated.masterOf(channel)) === replica ? true : undefined), {
          what: "the replica promoted"
        })
      )
      // ioredis moves each instance's subscriptions to the new master once it sees the new slot map.
      yield* promise(() =>
        eventually(
          async () => ((await Effect.runPromise(subscribersOf(channel, replica, replicated))) === 2 ? true : undefined),
          { what: "both instances subscribed on the new master", timeoutMs: 15_000 }
        )
      )
      const id = idWhere("failed-over-", (id) => ClusterClient.groupOf(id) === group)
      const organiser = Polls.organiserKey()
      yield* untilSucceeds(a.create(definition(id), organiser.hash))
      expect(b.mayBeDefined(id)).toBe(true)
      expect((yield* b.close(id, organiser.key)).closed).toBe(true)
    })
  )
})
