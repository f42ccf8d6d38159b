import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Logger } from "effect"
import {
  AlreadyVoted,
  MAX_OPTIONS_PER_POLL,
  OptionId,
  PollId,
  StoreUnavailable,
  TooManyOptions,
  VoterId
} from "../../src/Domain.js"
import * as ClusterStore from "../../src/VoteStore/Cluster.js"
import { countsKey } from "../../src/VoteStore/Redis.js"
import { type Batch, VoteStore } from "../../src/VoteStore.js"
import { type ClusterNodeInfo, type RedisCluster, startCluster } from "../support/cluster.js"
import { failsInTime, promise, untilSucceeds as retried } from "../support/effect.js"

const poll = (id: string) => PollId.make(id)
const option = (id: string) => OptionId.make(id)

/** 3 masters with a replica each; and 3 masters alone, whose slots keep answering while another master is down. */
let replicated: RedisCluster
let bare: RedisCluster

beforeAll(async () => {
  ;[replicated, bare] = await Promise.all([
    startCluster({ requireFullCoverage: false }),
    startCluster({ replicas: 0, requireFullCoverage: false })
  ])
})

afterAll(async () => {
  await Promise.all([replicated?.stop(), bare?.stop()])
})

/** Built when a test runs, after the clusters have started. */
const storeOn = (cluster: RedisCluster, waitReplicas: number) =>
  ClusterStore.layer({ seeds: cluster.seeds, waitReplicas, commandTimeoutMs: 1000 })

const masterIn = (nodes: ReadonlyArray<ClusterNodeInfo>, pollId: string) => {
  const slot = ClusterStore.slotOf(pollId)
  return nodes.find((n) => n.role === "master" && n.slots.some(([first, last]) => first <= slot && slot <= last))!
}

/** The first poll id with this prefix whose slot the given master serves (or does not serve, with `not`). */
const pollOn = (nodes: ReadonlyArray<ClusterNodeInfo>, prefix: string, port: number, not = false) => {
  for (let i = 0; ; i++) {
    const id = `${prefix}-${i}`
    if ((masterIn(nodes, id).port === port) !== not) return poll(id)
  }
}

const counts = (increments: Record<string, number>) =>
  new Map(Object.entries(increments).map(([o, n]) => [option(o), n]))
const batch = (id: string, polls: ReadonlyArray<PollId>, increments: Record<string, number>): Batch => ({
  id,
  increments: new Map(polls.map((p) => [p, counts(increments)]))
})

/** The counts of a poll as the cluster holds them, read past the store. */
const stored = (cluster: RedisCluster, pollId: string) =>
  promise(async () => {
    const client = cluster.client()
    try {
      return await client.hgetall(countsKey(pollId))
    } finally {
      client.disconnect()
    }
  })

/** Until it succeeds, at half the usual pace (every 200 ms, 20 s in all): these tests wait out failovers. */
const untilSucceeds = <A, E>(effect: Effect.Effect<A, E>, attempts = 100) => retried(effect, attempts, 200)

describe("the Redis Cluster vote store", () => {
  it.live("computes each poll's slot as the cluster does", () =>
    Effect.gen(function* () {
      for (const id of ["100", "200", "__proto__", "constructor", "a.b-c_D", "x".repeat(64)]) {
        expect(ClusterStore.slotOf(id)).toBe(yield* promise(() => replicated.slotOf(countsKey(id))))
      }
      const partitions = new Set(Array.from({ length: 200 }, (_, i) => ClusterStore.partitionOf(`p-${i}`)))
      expect(partitions.size).toBe(ClusterStore.SLOT_GROUPS)
      expect([...partitions].every((p) => /^slot-group-([0-9]|1[0-5])$/.test(p))).toBe(true)
    })
  )

  it.live("REDIS_WAIT_REPLICAS unset reads the replicas from CLUSTER NODES: 1 with a replica per master, else 0", () =>
    Effect.gen(function* () {
      // Every node's view together, as the store reads them at start.
      const nodesOf = (cluster: RedisCluster) =>
        promise(async () => {
          const client = cluster.client()
          try {
            await client.ping()
            return await Promise.all(client.nodes("all").map((node) => node.cluster("NODES") as Promise<string>))
          } finally {
            client.disconnect()
          }
        })
      expect(
        ClusterStore.replicasConfigured(
          ...(yield* untilSucceeds(
            nodesOf(replicated).pipe(Effect.filterOrFail((texts) => ClusterStore.replicasConfigured(...texts) === 1))
          ))
        )
      ).toBe(1)
      expect(ClusterStore.replicasConfigured(...(yield* nodesOf(bare)))).toBe(0)
      // The store itself, setting unset: what it logs it waits for.
      const decided = (cluster: RedisCluster) => {
        const lines: Array<string> = []
        return Effect.scoped(Layer.build(ClusterStore.layer({ seeds: cluster.seeds, waitReplicas: "auto" }))).pipe(
          Effect.provide(
            Logger.replace(
              Logger.defaultLogger,
              Logger.make(({ message }) => lines.push(String(message)))
            )
          ),
          Effect.map(() => lines.find((line) => line.includes("a flushed batch is confirmed once")))
        )
      }
      const line = yield* decided(replicated)
      expect(line).toMatch(/confirmed once 1 replica/)
      expect(yield* decided(bare)).toMatch(/confirmed once 0 replica/)
      // A replica assigned a moment ago (not synced, so not yet in CLUSTER SLOTS) counts; a master without slots
      // needs none; an answer without masters says nothing.
      const fresh = [
        "a1 127.0.0.1:7100@17100 myself,master - 0 0 1 connected 0-8191",
        "b1 127.0.0.1:7101@17101 master - 0 0 2 connected 8192-16383",
        "a2 127.0.0.1:7102@17102 slave a1 0 0 1 connected",
        "b2 127.0.0.1:7103@17103 slave,fail b1 0 0 2 disconnected",
        "c1 127.0.0.1:7104@17104 master - 0 0 3 connected"
      ].join("\n")
      expect(ClusterStore.replicasConfigured(fresh)).toBe(1)
      expect(ClusterStore.replicasConfigured(fresh.replace("slave,fail b1", "slave,fail c1"))).toBe(0)
      expect(ClusterStore.replicasConfigured("")).toBeUndefined()
    })
  )

  it.live("counts votes on polls across many slots, on every master", () =>
    Effect.gen(function* () {
      const store = yield* VoteStore
      const polls = Array.from({ length: 60 }, (_, i) => poll(`many-${i}`))
      expect(new Set(polls.map((p) => masterIn(replicated.nodes, p).port)).size).toBe(3)
      yield* Effect.forEach(
        polls,
        (p, i) =>
          Effect.zipRight(
            Effect.repeatN(store.vote(p, option("A")), i % 3),
            i % 2 === 0 ? store.vote(p, option("B")) : Effect.void
          ),
        { concurrency: 10, discard: true }
      )
      for (const [i, p] of polls.entries()) {
        const expected = i % 2 === 0 ? { A: 1 + (i % 3), B: 1 } : { A: 1 + (i % 3) }
        const results = yield* store.results(p)
        expect({ ...results.counts }).toEqual(expected)
        expect(results.servedVia).toBe(ClusterStore.REDIS_CLUSTER)
        expect(yield* stored(replicated, p)).toEqual(
          Object.fromEntries(Object.entries(expected).map(([o, n]) => [o, String(n)]))
        )
      }
      const options = yield* store.optionsOf([...polls, poll("never-voted")])
      expect([...options.get(polls[0]!)!].sort()).toEqual(["A", "B"])
      expect(options.get(polls[1]!)).toEqual(["A"])
      expect(options.get(poll("never-voted"))).toEqual([])

      // Ids that spell Object.prototype members are ids like any other.
      yield* store.vote(poll("__proto__"), option("constructor"))
      expect({ ...(yield* store.results(poll("__proto__"))).counts }).toEqual({ constructor: 1 })

      const once = poll("once")
      yield* store.voteOnce(once, option("A"), VoterId.make("v1"))
      expect(yield* Effect.flip(store.voteOnce(once, option("B"), VoterId.make("v1")))).toBeInstanceOf(AlreadyVoted)
      yield* store.voteOnce(once, option("B"), VoterId.make("v2"))
      expect({ ...(yield* store.results(once)).counts }).toEqual({ A: 1, B: 1 })

      const capped = poll("capped")
      yield* Effect.forEach(
        Array.from({ length: MAX_OPTIONS_PER_POLL }, (_, i) => option(`o${i}`)),
        (o) => store.vote(capped, o),
        { concurrency: 20, discard: true }
      )
      expect(yield* Effect.flip(store.vote(capped, option("one-more")))).toBeInstanceOf(TooManyOptions)
      yield* store.vote(capped, option("o0"))

      const health = yield* store.health
      expect(health.pendingVotes).toBe(0)
      expect(health.nodes).toEqual(
        replicated.nodes
          .filter((n) => n.role === "master")
          .map((n) => ({ name: `127.0.0.1:${n.port}`, reachable: true }))
          .sort((a, b) => a.name.localeCompare(b.name))
      )
    }).pipe(Effect.provide(storeOn(replicated, 0)))
  )

  it.live("applies a batch once however often it is applied, and says which batches it has applied", () =>
    Effect.gen(function* () {
      const store = yield* VoteStore
      const polls = Array.from({ length: 30 }, (_, i) => poll(`batched-${i}`))
      const first = batch("b-1", polls, { A: 2, B: 1 })
      yield* store.applyBatch(first)
      yield* store.applyBatch(first)
      // The id decides, not the contents.
      yield* store.applyBatch(batch("b-1", polls, { A: 5 }))
      yield* store.applyBatch(batch("b-2", polls.slice(0, 10), { A: 1 }))
      for (const [i, p] of polls.entries()) {
        const exact = yield* store.exactResults(p, ["b-1", "b-2", "b-never"])
        expect({ ...exact.counts }).toEqual(i < 10 ? { A: 3, B: 1 } : { A: 2, B: 1 })
        expect(exact.appliedBatches).toEqual(i < 10 ? ["b-1", "b-2"] : ["b-1"])
        expect(exact.servedVia).toBe(ClusterStore.REDIS_CLUSTER)
      }
      expect((yield* store.exactResults(poll("batched-none"), ["b-1"])).appliedBatches).toEqual([])
    }).pipe(Effect.provide(storeOn(replicated, 1)))
  )

  it.live("forgets a confirmed batch: its markers, one per poll, are gone at once, and the counts stay", () =>
    Effect.gen(function* () {
      const store = yield* VoteStore
      const polls = Array.from({ length: 40 }, (_, i) => poll(`forgotten-${i}`))
      const applied = batch("b-forget", polls, { A: 1 })
      yield* store.applyBatch(applied)
      const markers = () =>
        promise(async () => {
          const client = replicated.client()
          try {
            return (await Promise.all(polls.map((p) => client.exists(`poll:{${p}}:batch:b-forget`)))).reduce(
              (a, b) => a + b,
              0
            )
          } finally {
            client.disconnect()
          }
        })
      expect(yield* markers()).toBe(polls.length)
      yield* store.forgetBatch!(applied)
      expect(yield* markers()).toBe(0)
      for (const p of polls) expect(yield* stored(replicated, p)).toEqual({ A: "1" })
    }).pipe(Effect.provide(storeOn(replicated, 1)))
  )

  it.scopedLive(
    "refuses to confirm a batch that no replica holds, and confirms its retry once the replica is back",
    () =>
      Effect.gen(function* () {
        const store = yield* VoteStore
        const nodes = yield* promise(() => replicated.topology())
        const replica = nodes.find((n) => n.role === "replica")!
        const lonely = pollOn(nodes, "lonely", replica.masterPort!)
        const other = pollOn(nodes, "elsewhere", replica.masterPort!, true)
        const both = batch("b-unconfirmed", [lonely, other], { A: 1 })

        yield* promise(() => replicated.kill(replica.port))
        yield* Effect.addFinalizer(() => promise(() => replicated.start(replica.port)))
        const refused = yield* Effect.flip(store.applyBatch(both))
        expect(refused).toBeInstanceOf(StoreUnavailable)
        expect(refused.reason).toContain("0 of 1 replicas")
        // Applied on the master but not confirmed: the buffer keeps it, and reads know it is in the counts.
        expect((yield* store.exactResults(lonely, [both.id])).appliedBatches).toEqual([both.id])
        expect(yield* Effect.flip(store.applyBatch(both))).toBeInstanceOf(StoreUnavailable)

        yield* promise(() => replicated.start(replica.port))
        yield* promise(() => replicated.waitForReplicas())
        yield* untilSucceeds(store.applyBatch(both))
        expect({ ...(yield* store.results(lonely)).counts }).toEqual({ A: 1 })
        expect({ ...(yield* store.results(other)).counts }).toEqual({ A: 1 })
      }).pipe(Effect.provide(storeOn(replicated, 1)))
  )

  it.scopedLive("counts a batch exactly once when it is retried across a failover", () =>
    Effect.gen(function* () {
      const store = yield* VoteStore
      const nodes = yield* promise(() => replicated.topology())
      const master = nodes.find((n) => n.role === "master")!
      const doomed = pollOn(nodes, "doomed", master.port)
      const spared = Array.from({ length: 6 }, (_, i) => pollOn(nodes, `spared-${i}`, master.port, true))
      const confirmed = batch("b-confirmed", [doomed, ...spared], { A: 1 })
      const interrupted = batch("b-interrupted", [doomed, ...spared], { B: 1 })

      // Confirmed by the replica, so it survives the master; its retry (an answer lost) must add nothing.
      yield* store.applyBatch(confirmed)
      yield* promise(() => replicated.kill(master.port))
      yield* Effect.addFinalizer(() => promise(() => replicated.start(master.port)))
      // The parts on the other masters are applied, the one on the dead master is not.
      expect(yield* Effect.flip(store.applyBatch(interrupted))).toBeInstanceOf(StoreUnavailable)

      const promoted = yield* untilSucceeds(
        Effect.filterOrFail(
          promise(() => replicated.masterOf(countsKey(doomed)).catch(() => master.port)),
          (port) => port !== master.port,
          () => "not promoted yet"
        ),
        100
      )
      expect(promoted).toBe(nodes.find((n) => n.masterPort === master.port)!.port)
      // The old master comes back as the replica of the promoted one, so WAIT 1 can be met again.
      yield* promise(() => replicated.start(master.port))
      yield* untilSucceeds(Effect.zipRight(store.applyBatch(confirmed), store.applyBatch(interrupted)))
      yield* store.applyBatch(interrupted)

      for (const p of [doomed, ...spared]) {
        expect({ ...(yield* store.results(p)).counts }).toEqual({ A: 1, B: 1 })
      }
      expect((yield* store.health).nodes).toContainEqual({ name: `127.0.0.1:${promoted}`, reachable: true })
    }).pipe(Effect.provide(storeOn(replicated, 1)))
  )

  it.scopedLive("answers 503 within 2 s for a poll whose master is down, while polls on other masters vote", () =>
    Effect.gen(function* () {
      const store = yield* VoteStore
      const master = bare.nodes[0]!
      const down = pollOn(bare.nodes, "down", master.port)
      const up = pollOn(bare.nodes, "up", master.port, true)
      yield* store.vote(down, option("A"))
      yield* store.vote(up, option("A"))

      yield* promise(() => bare.kill(master.port))
      yield* Effect.addFinalizer(() => promise(() => bare.start(master.port)))
      expect(yield* failsInTime(store.vote(down, option("A")))).toBeInstanceOf(StoreUnavailable)
      yield* store.vote(up, option("A"))
      // Once the others have marked it failed, the cluster is still up for the slots that have a master.
      yield* untilSucceeds(
        Effect.filterOrFail(
          promise(() => bare.topology()),
          (live) => live.every((n) => n.port !== master.port),
          () => "not marked failed yet"
        )
      )
      expect(yield* failsInTime(store.vote(down, option("A")))).toBeInstanceOf(StoreUnavailable)
      expect(yield* failsInTime(store.results(down))).toBeInstanceOf(StoreUnavailable)
      expect(yield* failsInTime(store.applyBatch(batch("b-partial", [down, up], { B: 1 })))).toBeInstanceOf(
        StoreUnavailable
      )
      yield* store.vote(up, option("A"))
      const health = yield* store.health
      expect(health.nodes).toContainEqual({ name: `127.0.0.1:${master.port}`, reachable: false })
      expect(health.nodes.filter((n) => n.reachable)).toHaveLength(2)

      // Back with its append-only file: the client finds it again by itself, and the batch's retry adds once.
      yield* promise(() => bare.start(master.port))
      yield* untilSucceeds(store.vote(down, option("A")))
      yield* untilSucceeds(store.applyBatch(batch("b-partial", [down, up], { B: 1 })))
      expect({ ...(yield* store.results(down)).counts }).toEqual({ A: 2, B: 1 })
      expect({ ...(yield* store.results(up)).counts }).toEqual({ A: 3, B: 1 })
    }).pipe(Effect.provide(storeOn(bare, 0)))
  )

  it.scopedLive(
    "never counts a vote it answered 503 for, though the master's clock was not read yet when it was sent",
    () =>
      Effect.gen(function* () {
        const master = bare.nodes[1]!
        const stalled = pollOn(bare.nodes, "stalled", master.port)
        const awake = pollOn(bare.nodes, "awake", master.port, true)
        // Stalled before the store starts, so the store has never read that master's clock: its connection opens but
        // nothing on it is answered, and ioredis holds what is sent to it until the master answers again.
        yield* promise(() => bare.pause(master.port))
        yield* Effect.addFinalizer(() => promise(() => bare.resume(master.port)))
        yield* Effect.gen(function* () {
          const store = yield* VoteStore
          yield* untilSucceeds(store.vote(awake, option("A")))
          expect(yield* failsInTime(store.vote(stalled, option("A")))).toBeInstanceOf(StoreUnavailable)
          yield* promise(() => bare.resume(master.port))
          yield* untilSucceeds(store.vote(stalled, option("B")))
          // Whatever the client held has been sent by the time the master answers the next command.
          yield* store.vote(stalled, option("B"))
          expect(yield* stored(bare, stalled)).toEqual({ B: "2" })
        }).pipe(Effect.provide(storeOn(bare, 0)))
      })
  )

  it.scopedLive("starts while the cluster is down, answers 503, and connects by itself when it is back", () =>
    Effect.gen(function* () {
      yield* Effect.forEach(bare.ports, (port) => promise(() => bare.kill(port)), { discard: true })
      yield* Effect.addFinalizer(() => Effect.forEach(bare.ports, (port) => promise(() => bare.start(port))))
      yield* Effect.gen(function* () {
        const store = yield* VoteStore
        const late = poll("late")
        expect(yield* failsInTime(store.vote(late, option("A")))).toBeInstanceOf(StoreUnavailable)
        expect(yield* failsInTime(store.applyBatch(batch("b-late", [late], { B: 1 })))).toBeInstanceOf(StoreUnavailable)
        expect((yield* store.health).nodes).toEqual([{ name: ClusterStore.REDIS_CLUSTER, reachable: false }])
        yield* Effect.forEach(bare.ports, (port) => promise(() => bare.start(port)), { discard: true })
        yield* untilSucceeds(store.vote(late, option("A")))
        yield* untilSucceeds(store.applyBatch(batch("b-late", [late], { B: 1 })))
        expect({ ...(yield* store.results(late)).counts }).toEqual({ A: 1, B: 1 })
        expect((yield* store.health).nodes.map((n) => n.reachable)).toEqual([true, true, true])
      }).pipe(Effect.provide(storeOn(bare, 0)))
    })
  )
})
