import { afterAll, beforeAll, describe, expect, it, layer } from "@effect/vitest"
import { ConfigProvider, Duration, Effect, Layer, Schedule, TestClock } from "effect"
import type { Redis } from "ioredis"
import {
  AlreadyVoted,
  MAX_OPTIONS_PER_POLL,
  OptionId,
  PollId,
  StoreUnavailable,
  TooManyOptions,
  VoterId
} from "../src/Domain.js"
import { AppConfig, type Stage, STAGES } from "../src/Config.js"
import * as Stages from "../src/Stages.js"
import * as ClusterStore from "../src/VoteStore/Cluster.js"
import * as RedisStore from "../src/VoteStore/Redis.js"
import { type Batch, IN_MEMORY, VoteStore, type VoteStoreShape } from "../src/VoteStore.js"
import { type RedisCluster, startCluster } from "./support/cluster.js"
import { type RedisServer, startRedis } from "./support/redis.js"
import { untilSucceeds } from "./support/effect.js"
import { sleep } from "./support/wait.js"

const poll = (id: string) => PollId.make(id)
const option = (id: string) => OptionId.make(id)

interface Backend {
  readonly store: VoteStoreShape
  /**
   * Lets a buffering store write what it holds (a flush period passes on the test clock, then its writes land); a
   * no-op for the others. Counts must read the same after it.
   */
  readonly settle: Effect.Effect<void>
}

let single: RedisServer
let second: RedisServer
let outage: RedisServer
/** The cluster stage's: 3 masters, each with a replica, so its flushes wait for one. */
let cluster: RedisCluster

beforeAll(async () => {
  single = await startRedis()
  second = await startRedis()
  outage = await startRedis()
  cluster = await startCluster()
})

afterAll(async () => {
  await Promise.all([single?.stop(), second?.stop(), outage?.stop(), cluster?.stop()])
})

const FLUSH_MS = 1000

/** The stage's services exactly as the app composes them, over this file's servers. */
const stageLayer = (stage: Stage) =>
  Layer.unwrapEffect(
    Effect.map(
      // Suspended: the servers start in the file's beforeAll, after this runs.
      Effect.suspend(() =>
        Effect.withConfigProvider(
          AppConfig,
          ConfigProvider.fromMap(
            new Map([
              ["POLL_STAGE", stage],
              ["REDIS_URL", single.url],
              ["REDIS_NODES", `shard_a=${single.url},shard_b=${second.url}`],
              ["REDIS_CLUSTER", cluster.seeds.join(",")],
              ["FLUSH_INTERVAL_MS", String(FLUSH_MS)]
            ])
          )
        )
      ),
      (config) => Stages.compositions[stage](config)
    )
  )

/** Until the store holds nothing buffered: a flush sealed on the test clock still has its writes to make. */
const drained = (store: VoteStoreShape) =>
  Effect.gen(function* () {
    for (let i = 0; i < 200; i++) {
      if ((yield* store.health).pendingVotes === 0) return
      yield* Effect.promise(() => sleep(10))
    }
    return yield* Effect.dieMessage("the buffer did not drain")
  })

const backend: Effect.Effect<Backend, never, VoteStore> = Effect.map(VoteStore, (store) => ({
  store,
  settle: Effect.zipRight(TestClock.adjust(Duration.millis(FLUSH_MS)), drained(store))
}))

const NODES: Record<Stage, () => ReadonlyArray<string>> = {
  memory: () => [IN_MEMORY],
  redis: () => ["redis"],
  cached: () => ["redis"],
  batched: () => ["redis"],
  sharded: () => ["shard_a", "shard_b"],
  full: () => ["shard_a", "shard_b"],
  // The cluster's masters, by address, as the store finds them.
  cluster: () =>
    cluster.nodes
      .filter((n) => n.role === "master")
      .map((n) => `127.0.0.1:${n.port}`)
      .sort()
}

let pollSequence = 0
/** A poll id no other test has used, on any backend (the Redis backends share servers). */
const freshPoll = (backend: string) => poll(`${backend.replace(/\W+/g, "_")}-${++pollSequence}`)

const counts = (store: VoteStoreShape, pollId: PollId) => Effect.map(store.results(pollId), (r) => r.counts)

/** Every member name of a plain object, each a valid id: the names a counts object must not confuse with its keys. */
const PROTOTYPE_NAMES = Object.getOwnPropertyNames(Object.prototype)
/** Own entries only, in a fixed order: `toEqual` on objects would let a prototype member stand in for a key. */
const sortedEntries = (counts: Readonly<Record<string, number>>) =>
  Object.keys(counts)
    .sort()
    .map((key) => [key, counts[key]])

/**
 * A batch applied as the write-behind applies it: a StoreUnavailable (on the cluster, a replica slower to confirm than
 * the WAIT allows, as under load) is tried again with the same id, which must add nothing a second time.
 */
const applied = (store: VoteStoreShape, batch: Batch) => untilSucceeds(store.applyBatch(batch), 20)

const batchOf = (id: string, increments: Record<string, Record<string, number>>): Batch => ({
  id,
  increments: new Map(
    Object.entries(increments).map(([p, options]) => [
      poll(p),
      new Map(Object.entries(options).map(([o, n]) => [option(o), n]))
    ])
  )
})

/** The contract over one stage's composition, built once and shared by its tests (each takes polls of its own). */
/**
 * `nodes`: what health names; `partitions`: what partitionOf may answer (the nodes, but for the cluster, whose
 * masters change on failover: fixed groups of its slots).
 */
const contract = (name: Stage, nodes: () => ReadonlyArray<string>, partitions = nodes) =>
  layer(stageLayer(name), { timeout: Duration.seconds(30) })(`VoteStore contract: the ${name} stage`, (it) => {
    const make = backend
    it.scoped("a vote shows in the results", () =>
      Effect.gen(function* () {
        const { store, settle } = yield* make
        const p = freshPoll(name)
        yield* store.vote(p, option("A"))
        expect(yield* counts(store, p)).toEqual({ A: 1 })
        yield* settle
        expect(yield* counts(store, p)).toEqual({ A: 1 })
      })
    )

    it.scoped("counts accumulate per option, and polls are independent", () =>
      Effect.gen(function* () {
        const { store, settle } = yield* make
        const p = freshPoll(name)
        const q = freshPoll(name)
        for (const o of ["A", "B", "A", "C", "A", "B"]) yield* store.vote(p, option(o))
        yield* store.vote(q, option("B"))
        yield* settle
        yield* store.vote(p, option("C"))
        expect(yield* counts(store, p)).toEqual({ A: 3, B: 2, C: 2 })
        expect(yield* counts(store, q)).toEqual({ B: 1 })
        yield* settle
        expect(yield* counts(store, p)).toEqual({ A: 3, B: 2, C: 2 })
      })
    )

    it.scoped("ids that spell Object.prototype members are counted exactly, as poll ids and as option ids", () =>
      Effect.gen(function* () {
        const { store, settle } = yield* make
        const p = freshPoll(name)
        for (const [i, id] of PROTOTYPE_NAMES.entries()) {
          for (let n = 0; n <= i % 3; n++) yield* store.vote(p, option(id))
        }
        const expected = PROTOTYPE_NAMES.map((id, i) => [id, (i % 3) + 1] as const)
        expect(sortedEntries(yield* counts(store, p))).toEqual(sortedEntries(Object.fromEntries(expected)))
        yield* settle
        expect(sortedEntries(yield* counts(store, p))).toEqual(sortedEntries(Object.fromEntries(expected)))
        // The Redis backends share servers across backends and runs: compare what each vote added, past any cache.
        const stored = (pollId: PollId) => Effect.map(store.exactResults(pollId, []), (r) => r.counts)
        for (const id of ["__proto__", "constructor", "toString"]) {
          const before = yield* stored(poll(id))
          yield* store.vote(poll(id), option(id))
          yield* store.vote(poll(id), option("A"))
          const after = yield* stored(poll(id))
          expect(Object.hasOwn(after, id) && after[id]).toBe((Object.hasOwn(before, id) ? before[id]! : 0) + 1)
          expect(after["A"]).toBe((Object.hasOwn(before, "A") ? before["A"]! : 0) + 1)
          yield* settle
          expect(sortedEntries(yield* stored(poll(id)))).toEqual(sortedEntries(after))
        }
      })
    )

    it.scoped("voteOnce records the voter and counts together, at once; the same voter again is AlreadyVoted", () =>
      Effect.gen(function* () {
        const { store, settle } = yield* make
        const p = freshPoll(name)
        yield* store.vote(p, option("A"))
        // A read before the votes below, which a cache would keep.
        expect(yield* counts(store, p)).toEqual({ A: 1 })
        yield* store.voteOnce(p, option("B"), VoterId.make("ann"))
        yield* store.voteOnce(p, option("A"), VoterId.make("bob"))
        expect(yield* counts(store, p)).toEqual({ A: 2, B: 1 })
        const again = yield* Effect.flip(store.voteOnce(p, option("A"), VoterId.make("ann")))
        expect(again).toBeInstanceOf(AlreadyVoted)
        // The same voter on another poll is another vote.
        const q = freshPoll(name)
        yield* store.voteOnce(q, option("A"), VoterId.make("ann"))
        yield* settle
        expect(yield* counts(store, p)).toEqual({ A: 2, B: 1 })
        expect(yield* counts(store, q)).toEqual({ A: 1 })
      })
    )

    it.scoped("an unknown poll has no counts", () =>
      Effect.gen(function* () {
        const { store, settle } = yield* make
        const p = freshPoll(name)
        expect(yield* counts(store, p)).toEqual({})
        yield* settle
        expect(yield* counts(store, p)).toEqual({})
      })
    )

    it.scoped(
      `the option after ${MAX_OPTIONS_PER_POLL} distinct ones fails with TooManyOptions and is not counted`,
      () =>
        Effect.gen(function* () {
          const { store, settle } = yield* make
          const p = freshPoll(name)
          const options = Array.from({ length: MAX_OPTIONS_PER_POLL }, (_, i) => option(`o${i}`))
          yield* Effect.forEach(options, (o) => store.vote(p, o), { discard: true })
          yield* settle

          const error = yield* Effect.flip(store.vote(p, option("one-too-many")))
          expect(error).toBeInstanceOf(TooManyOptions)
          expect(error).toMatchObject({ pollId: p })
          yield* store.vote(p, options[0]!)
          yield* store.vote(p, options[MAX_OPTIONS_PER_POLL - 1]!)

          const result = yield* counts(store, p)
          expect(Object.keys(result)).toHaveLength(MAX_OPTIONS_PER_POLL)
          expect(result["one-too-many"]).toBeUndefined()
          expect(result["o0"]).toBe(2)
          expect(result[`o${MAX_OPTIONS_PER_POLL - 1}`]).toBe(2)
          expect(result["o1"]).toBe(1)
          yield* settle
          expect(yield* counts(store, p)).toEqual(result)
          // Another poll is not affected by this one's cap.
          const q = freshPoll(name)
          yield* store.vote(q, option("one-too-many"))
          expect(yield* counts(store, q)).toEqual({ "one-too-many": 1 })
        })
    )

    it.scoped("applyBatch adds its increments once: the same id again is a no-op, another id applies again", () =>
      Effect.gen(function* () {
        const { store, settle } = yield* make
        const p = freshPoll(name)
        const q = freshPoll(name)
        const id = `batch-${p}`
        const increments = { [p]: { A: 2, B: 1 }, [q]: { A: 5 } }
        yield* store.vote(p, option("A"))
        yield* settle

        yield* applied(store, batchOf(id, increments))
        expect(yield* counts(store, p)).toEqual({ A: 3, B: 1 })
        expect(yield* counts(store, q)).toEqual({ A: 5 })

        yield* applied(store, batchOf(id, increments))
        yield* settle
        expect(yield* counts(store, p)).toEqual({ A: 3, B: 1 })
        expect(yield* counts(store, q)).toEqual({ A: 5 })

        yield* applied(store, batchOf(`${id}-next`, increments))
        expect(yield* counts(store, p)).toEqual({ A: 5, B: 2 })
        expect(yield* counts(store, q)).toEqual({ A: 10 })
      })
    )

    it.scoped("partitionOf is stable and names one of the store's partitions", () =>
      Effect.gen(function* () {
        const { store } = yield* make
        const polls = Array.from({ length: 64 }, () => freshPoll(name))
        const first = polls.map(store.partitionOf)
        expect(polls.map(store.partitionOf)).toEqual(first)
        const seen = new Set(first)
        for (const partition of seen) expect(partitions()).toContain(partition)
        // With more than one partition, polls are spread over many of them.
        if (partitions().length <= 2) expect(seen.size).toBe(partitions().length)
        else expect(seen.size).toBeGreaterThanOrEqual(8)
      })
    )

    it.scoped("health lists every node as reachable", () =>
      Effect.gen(function* () {
        const { store, settle } = yield* make
        // The stage is shared by the tests above: what they left buffered is written first.
        yield* settle
        const health = yield* store.health
        expect(health.nodes).toEqual(nodes().map((n) => ({ name: n, reachable: true })))
        expect(health.pendingVotes).toBe(0)
      })
    )
  })

const SLOT_GROUPS = Array.from({ length: ClusterStore.SLOT_GROUPS }, (_, i) => `slot-group-${i}`)
for (const stage of STAGES) {
  contract(stage, NODES[stage], stage === "cluster" ? () => SLOT_GROUPS : NODES[stage])
}

describe("Redis backend", () => {
  let raw: Redis
  beforeAll(() => {
    raw = single.client()
  })

  it.scoped("keeps a poll's counts in the hash poll:{<id>}:counts and nowhere else", () =>
    Effect.gen(function* () {
      const store = yield* RedisStore.make({ url: single.url, name: "redis_single" })
      const p = freshPoll("layout")
      expect(RedisStore.countsKey(p)).toBe(`poll:{${p}}:counts`)
      yield* store.vote(p, option("A"))
      yield* store.vote(p, option("B"))
      yield* store.vote(p, option("A"))
      expect(yield* Effect.promise(() => raw.hgetall(`poll:{${p}}:counts`))).toEqual({ A: "2", B: "1" })
      expect(yield* Effect.promise(() => raw.keys(`*${p}*`))).toEqual([`poll:{${p}}:counts`])
      expect(yield* store.results(p)).toMatchObject({ counts: { A: 2, B: 1 }, servedVia: "redis_single" })
    })
  )

  it.scoped("applies a batch into the same hashes", () =>
    Effect.gen(function* () {
      const store = yield* RedisStore.make({ url: single.url, name: "redis_single" })
      const p = freshPoll("layout")
      yield* store.applyBatch(batchOf(`batch-${p}`, { [p]: { A: 3 } }))
      expect(yield* Effect.promise(() => raw.hgetall(`poll:{${p}}:counts`))).toEqual({ A: "3" })
    })
  )

  it.scopedLive(
    "fails with StoreUnavailable within 2 s while the server is down, and works again once it is back",
    () =>
      Effect.gen(function* () {
        const store = yield* RedisStore.make({ url: outage.url, name: "redis_outage" })
        const p = freshPoll("outage")
        yield* store.vote(p, option("A"))
        expect((yield* store.health).nodes).toEqual([{ name: "redis_outage", reachable: true }])

        yield* Effect.promise(() => outage.halt())
        const timed = <A, E>(effect: Effect.Effect<A, E>) =>
          Effect.gen(function* () {
            const started = Date.now()
            const error = yield* Effect.flip(effect)
            return { error, elapsed: Date.now() - started }
          })
        for (const call of [store.vote(p, option("A")), store.results(p), store.vote(p, option("B"))]) {
          const { error, elapsed } = yield* timed(call)
          expect(error).toBeInstanceOf(StoreUnavailable)
          expect(error).toMatchObject({ node: "redis_outage" })
          expect(elapsed).toBeLessThan(2000)
        }
        expect((yield* store.health).nodes).toEqual([{ name: "redis_outage", reachable: false }])

        yield* Effect.promise(() => outage.start())
        // The same store, not rebuilt: its client reconnects by itself.
        yield* store
          .vote(p, option("B"))
          .pipe(Effect.retry(Schedule.spaced(Duration.millis(100)).pipe(Schedule.upTo(Duration.seconds(10)))))
        expect(yield* counts(store, p)).toEqual({ A: 1, B: 1 })
        expect((yield* store.health).nodes).toEqual([{ name: "redis_outage", reachable: true }])
      }),
    20_000
  )
})
