import * as fc from "fast-check"
import { Clock, Effect, Either, Logger, LogLevel, TestClock, TestContext } from "effect"
import type { OptionId, PollId } from "../src/Domain.js"
import * as Ring from "../src/Ring.js"
import type { VoteStoreShape } from "../src/VoteStore.js"
import * as Cached from "../src/VoteStore/Cached.js"
import * as Sharded from "../src/VoteStore/Sharded.js"
import * as WriteBehind from "../src/VoteStore/WriteBehind.js"
import * as FakeRedis from "./FakeRedis.js"
import * as RingStats from "./RingStats.js"

/**
 * Properties of the ring, and of the buffer and the cache over fake Redis shards (driven by TestClock). Shared by the
 * tests (a few runs) and by `npm run sim` (many runs); `SIM_SEED` fixes fast-check's seed so a failure replays.
 */

export const propertyParameters = <T>(defaults: fc.Parameters<T>): fc.Parameters<T> => {
  const seed = process.env.SIM_SEED
  return seed === undefined || seed === "" ? defaults : { ...defaults, seed: Number(seed) }
}

/** Runs an effect under a fresh TestClock, as `it.effect` does. */
export const runTest = <A, E>(effect: Effect.Effect<A, E>): Promise<A> =>
  Effect.runPromise(effect.pipe(Logger.withMinimumLogLevel(LogLevel.None), Effect.provide(TestContext.TestContext)))

class PropertyFailure extends Error {}
const ensure = (ok: boolean, message: () => string) => {
  if (!ok) throw new PropertyFailure(message())
}

const polls = ["p0", "p1", "p2", "p3"] as Array<PollId>
const options = ["A", "B", "C"] as Array<OptionId>

const sum = (records: Iterable<Readonly<Record<string, number>>>) => {
  const total: Record<string, number> = {}
  for (const r of records) for (const [k, n] of Object.entries(r)) total[k] = (total[k] ?? 0) + n
  return total
}

const describe = (counts: Readonly<Record<string, number>>) => JSON.stringify(counts, Object.keys(counts).sort())

// ---------------------------------------------------------------------------------------------------------------------
// Ring key stability

const nodeName = fc.string({
  unit: fc.constantFrom(..."abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/"),
  minLength: 1,
  maxLength: 20
})

/** 2 to 15 distinct node names, and one more that is not among them. */
export const nodesAndNewcomer = fc
  .uniqueArray(nodeName, { minLength: 3, maxLength: 16 })
  .map((names) => ({ nodes: names.slice(1), newcomer: names[0]! }))

/** Adding a node moves at most 1/(n+1) + 0.03 of the hash space, all of it onto the new node. */
export const checkAddMovesOnlyToNewcomer = (parameters: fc.Parameters<[{ nodes: Array<string>; newcomer: string }]>) =>
  fc.assert(
    fc.property(nodesAndNewcomer, ({ nodes, newcomer }) => {
      const before = Ring.make(nodes)
      const after = Ring.make([...nodes, newcomer])
      const { moved, flows } = RingStats.remap(before, after)
      for (const flow of flows.keys()) ensure(flow.endsWith(` -> ${newcomer}`), () => `keys moved ${flow}`)
      const bound = 1 / (nodes.length + 1) + 0.03
      ensure(moved <= bound, () => `${moved.toFixed(4)} of the keys moved, more than ${bound.toFixed(4)}`)
      // What moved is exactly the newcomer's share: nothing else changed hands.
      const share = Ring.ownership(after).get(newcomer)!
      ensure(Math.abs(moved - share) < 1e-12, () => `${moved} moved, but the newcomer owns ${share}`)
    }),
    parameters
  )

/** Removing a node moves only the keys it owned. */
export const checkRemoveMovesOnlyItsKeys = (
  parameters: fc.Parameters<[{ nodes: Array<string>; newcomer: string }, number]>
) =>
  fc.assert(
    fc.property(nodesAndNewcomer, fc.nat(), ({ nodes, newcomer }, pick) => {
      const all = [...nodes, newcomer]
      const gone = all[pick % all.length]!
      const before = Ring.make(all)
      const after = Ring.make(all.filter((n) => n !== gone))
      const { moved, flows } = RingStats.remap(before, after)
      for (const flow of flows.keys()) ensure(flow.startsWith(`${gone} -> `), () => `keys moved ${flow}`)
      const share = Ring.ownership(before).get(gone)!
      ensure(Math.abs(moved - share) < 1e-12, () => `${moved} moved, but ${gone} owned ${share}`)
    }),
    parameters
  )

/** Any order of the same node names gives the same ring and the same owner for every key. */
export const checkOrderIndependence = (parameters: fc.Parameters<[[Array<string>, Array<string>], Array<string>]>) =>
  fc.assert(
    fc.property(
      nodesAndNewcomer.chain(({ nodes }) =>
        fc.tuple(fc.constant(nodes), fc.shuffledSubarray(nodes, { minLength: nodes.length }))
      ),
      fc.array(fc.string({ minLength: 1, maxLength: 64 }), { minLength: 50, maxLength: 50 }),
      ([nodes, shuffled], keys) => {
        const a = Ring.make(nodes)
        const b = Ring.make(shuffled)
        ensure(a.nodes.join("\n") === b.nodes.join("\n"), () => `nodes ${a.nodes} vs ${b.nodes}`)
        ensure(
          a.points.every((p, i) => b.points[i] === p) && a.owners.every((o, i) => b.owners[i] === o),
          () => `the points differ for [${shuffled}] and [${nodes}]`
        )
        for (const key of keys) {
          ensure(Ring.nodeFor(a, key) === Ring.nodeFor(b, key), () => `${JSON.stringify(key)} maps differently`)
        }
      }
    ),
    parameters
  )

/** A command that votes for one of the options on one of the polls, under the given tag. */
const voteOn = <T extends string>(tag: T) =>
  fc.record({ _tag: fc.constant(tag), poll: fc.constantFrom(...polls), option: fc.constantFrom(...options) })

/** A read of one of the polls. */
const readOf = fc.record({ _tag: fc.constant("Read" as const), poll: fc.constantFrom(...polls) })

// ---------------------------------------------------------------------------------------------------------------------
// Buffer + store sums

/** How the store treats the flush that runs during one flush window. */
export type FlushOutcome = "ok" | "fail" | "failOnce" | "lostAnswer" | "lostAnswerEveryTime"

export type BufferCommand =
  | { readonly _tag: "Vote"; readonly poll: PollId; readonly option: OptionId }
  | { readonly _tag: "Read"; readonly poll: PollId }
  | { readonly _tag: "Flush"; readonly outcome: FlushOutcome }

export const bufferCommand: fc.Arbitrary<BufferCommand> = fc.oneof(
  {
    weight: 4,
    arbitrary: voteOn("Vote")
  },
  { weight: 2, arbitrary: readOf },
  {
    weight: 2,
    arbitrary: fc.record({
      _tag: fc.constant("Flush" as const),
      outcome: fc.constantFrom<FlushOutcome>("ok", "fail", "failOnce", "lostAnswer", "lostAnswerEveryTime")
    })
  }
)

export const bufferCommands = fc.array(bufferCommand, { minLength: 4, maxLength: 30, size: "medium" })

const FLUSH_MS = 1000
/** Long enough for one flush to start and finish all its retries and timeouts. */
const FLUSH_WINDOW_MS = FLUSH_MS + 500

const arm = (shard: FakeRedis.FakeRedis, outcome: FlushOutcome) => {
  switch (outcome) {
    case "ok":
      return
    case "fail":
      return shard.setRates({ error: 1 })
    case "failOnce":
      return shard.script("applyBatch", "error")
    case "lostAnswer":
      return shard.script("applyBatch", "timeoutAfterApply")
    case "lostAnswerEveryTime":
      return shard.setRates({ timeoutAfterApply: 1 })
  }
}

const disarm = (shard: FakeRedis.FakeRedis) => {
  shard.clearScript()
  shard.setRates({ error: 0, timeoutAfterApply: 0 })
}

/**
 * One instance's write-behind buffer over two shards. Whatever the interleaving of votes, reads and flushes that
 * succeed, fail, or are applied but answered too late: every read equals the votes accepted so far, no shard ever
 * holds more than was accepted, and after a final good flush the shards hold exactly the accepted votes.
 */
export const bufferSums = (
  commands: ReadonlyArray<BufferCommand>,
  wrapShard: (store: VoteStoreShape) => VoteStoreShape = (store) => store
) =>
  Effect.scoped(
    Effect.gen(function* () {
      const shards = ["redis_7000", "redis_7001"].map((name) => FakeRedis.make({ name, timeoutMs: 50 }))
      const inner = Sharded.make(shards.map((s) => ({ name: s.name, store: wrapShard(s.store) })))
      const store = yield* WriteBehind.make(inner, {
        flushInterval: FLUSH_MS,
        instanceId: "prop",
        gatherReads: (read) => read()
      })
      const accepted = new Map<PollId, Record<string, number>>()
      const stored = (poll: PollId) => sum(shards.map((s) => s.counts(poll)))

      for (const [i, command] of commands.entries()) {
        const at = `after command #${i} (${JSON.stringify(command)})`
        switch (command._tag) {
          case "Vote": {
            yield* store.vote(command.poll, command.option)
            const counts = accepted.get(command.poll) ?? {}
            counts[command.option] = (counts[command.option] ?? 0) + 1
            accepted.set(command.poll, counts)
            break
          }
          case "Read": {
            const { counts } = yield* store.results(command.poll)
            const want = accepted.get(command.poll) ?? {}
            ensure(
              describe(counts) === describe(want),
              () => `${at}: read ${describe(counts)}, accepted ${describe(want)}`
            )
            break
          }
          case "Flush": {
            for (const shard of shards) arm(shard, command.outcome)
            yield* TestClock.adjust(FLUSH_WINDOW_MS)
            for (const shard of shards) disarm(shard)
            break
          }
        }
        for (const poll of polls) {
          const have = stored(poll)
          const want = accepted.get(poll) ?? {}
          for (const [option, n] of Object.entries(have)) {
            ensure(
              n <= (want[option] ?? 0),
              () => `${at}: store holds ${describe(have)} for ${poll}, accepted ${describe(want)}`
            )
          }
        }
      }

      for (const shard of shards) disarm(shard)
      yield* TestClock.adjust(2 * FLUSH_WINDOW_MS)
      for (const poll of polls) {
        const have = stored(poll)
        const want = accepted.get(poll) ?? {}
        ensure(
          describe(have) === describe(want),
          () => `after the final good flush the store holds ${describe(have)} for ${poll}; accepted ${describe(want)}`
        )
      }
      const { pendingVotes } = yield* store.health
      ensure(pendingVotes === 0, () => `${pendingVotes} votes still buffered after the final good flush`)
    })
  )

export const checkBufferSums = (parameters: fc.Parameters<[Array<BufferCommand>]>) =>
  fc.assert(
    fc.asyncProperty(bufferCommands, (commands) => runTest(bufferSums(commands))),
    parameters
  )

// ---------------------------------------------------------------------------------------------------------------------
// Cache

export type CacheCommand =
  | { readonly _tag: "OtherVote"; readonly poll: PollId; readonly option: OptionId }
  | { readonly _tag: "OwnFlush"; readonly poll: PollId; readonly option: OptionId; readonly n: number }
  | { readonly _tag: "Read"; readonly poll: PollId }
  | { readonly _tag: "Wait"; readonly ms: number }
  | { readonly _tag: "Down" }
  | { readonly _tag: "Up" }

export const CACHE_TTL_MS = 500

export const cacheCommand: fc.Arbitrary<CacheCommand> = fc.oneof(
  {
    weight: 3,
    arbitrary: voteOn("OtherVote")
  },
  {
    weight: 1,
    arbitrary: fc.record({
      _tag: fc.constant("OwnFlush" as const),
      poll: fc.constantFrom(...polls),
      option: fc.constantFrom(...options),
      n: fc.integer({ min: 1, max: 3 })
    })
  },
  { weight: 4, arbitrary: readOf },
  {
    weight: 2,
    arbitrary: fc.record({ _tag: fc.constant("Wait" as const), ms: fc.integer({ min: 1, max: 2 * CACHE_TTL_MS }) })
  },
  { weight: 1, arbitrary: fc.constant({ _tag: "Down" as const }) },
  { weight: 1, arbitrary: fc.constant({ _tag: "Up" as const }) }
)

export const cacheCommands = fc.array(cacheCommand, { minLength: 8, maxLength: 40, size: "medium" })

/**
 * One instance's read cache over a shard that other instances write to directly. No read shows the store as it was
 * more than the TTL ago, a read always includes this instance's own flushed batches, it never shows more than the
 * store holds, and a poll's counts never go down from one read to the next.
 */
export const cacheFreshness = (
  commands: ReadonlyArray<CacheCommand>,
  makeCache: (inner: VoteStoreShape) => Effect.Effect<VoteStoreShape> = (inner) =>
    Cached.make(inner, { ttl: CACHE_TTL_MS })
) =>
  Effect.gen(function* () {
    const shard = FakeRedis.make({ name: "redis_7000" })
    const cached = yield* makeCache(shard.store)
    const seen = new Map<PollId, Record<string, number>>()
    let batches = 0
    for (const [i, command] of commands.entries()) {
      const at = `after command #${i} (${JSON.stringify(command)})`
      switch (command._tag) {
        case "OtherVote":
          yield* Effect.ignore(shard.store.vote(command.poll, command.option))
          break
        case "OwnFlush": {
          const increments = new Map([[command.poll, new Map([[command.option, command.n]])]])
          yield* Effect.ignore(cached.applyBatch({ id: `own-${++batches}`, increments }))
          break
        }
        case "Wait":
          yield* TestClock.adjust(command.ms)
          break
        case "Down":
          shard.down()
          break
        case "Up":
          shard.up()
          break
        case "Read": {
          const result = yield* Effect.either(cached.results(command.poll))
          if (Either.isLeft(result)) break
          const { counts } = result.right
          const now = yield* Clock.currentTimeMillis
          const log = shard.log.filter((c) => c.pollId === command.poll)
          const floor = seen.get(command.poll) ?? {}
          for (const option of options) {
            const got = counts[option] ?? 0
            const own = log.filter((c) => c.optionId === option && c.batchId !== undefined)
            const others = log.filter((c) => c.optionId === option && c.batchId === undefined)
            const low =
              own.reduce((n, c) => n + c.n, 0) +
              others.filter((c) => c.at < now - CACHE_TTL_MS).reduce((n, c) => n + c.n, 0)
            const high = shard.counts(command.poll)[option] ?? 0
            ensure(
              got >= low,
              () => `${at}: ${command.poll}/${option} = ${got}; the store held ${low} a TTL ago plus own batches`
            )
            ensure(got <= high, () => `${at}: ${command.poll}/${option} = ${got}; the store holds only ${high}`)
            ensure(
              got >= (floor[option] ?? 0),
              () => `${at}: ${command.poll}/${option} went down from ${floor[option]} to ${got}`
            )
          }
          seen.set(command.poll, { ...counts })
        }
      }
    }
  })

export const checkCacheFreshness = (parameters: fc.Parameters<[Array<CacheCommand>]>) =>
  fc.assert(
    fc.asyncProperty(cacheCommands, (commands) => runTest(cacheFreshness(commands))),
    parameters
  )
