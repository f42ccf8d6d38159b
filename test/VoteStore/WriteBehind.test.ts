import { describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Scope, TestClock } from "effect"
import {
  BufferFull,
  JournalFailed,
  MAX_OPTIONS_PER_POLL,
  OptionId,
  PollId,
  StoreUnavailable,
  TooManyOptions
} from "../../src/Domain.js"
import * as Journal from "../../src/VoteStore/Journal.js"
import * as WriteBehind from "../../src/VoteStore/WriteBehind.js"
import { makeMemory, type VoteStoreShape } from "../../src/VoteStore.js"

const FLUSH = Duration.seconds(1)
/** Long enough for a flush round and its retries (100 ms, then 200 ms) to finish, and the next round to start. */
const ROUND = Duration.sum(FLUSH, Duration.millis(400))
const poll = (id: string) => PollId.make(id)
const option = (id: string) => OptionId.make(id)

/**
 * The memory store, with batches that can be made to fail per partition (before applying anything), or refused
 * everywhere while the node stays reachable (Redis at maxmemory), or fail after they were applied (a reply lost to a
 * time-out). Counts the attempts and the votes each attempt carried. Its nodes are named after its partitions.
 */
const makeInner = (partitionOf: (pollId: PollId) => string = () => "only", nodes: ReadonlyArray<string> = ["only"]) =>
  Effect.gen(function* () {
    const memory = yield* makeMemory
    const state = {
      down: new Set<string>(),
      refusing: undefined as string | undefined,
      failAfterApply: 0,
      attempts: [] as Array<{ id: string; partitions: Array<string> }>
    }
    const store: VoteStoreShape = {
      ...memory,
      partitionOf,
      health: Effect.succeed({ nodes: nodes.map((name) => ({ name, reachable: true })), pendingVotes: 0 }),
      applyBatch: (batch) =>
        Effect.suspend(() => {
          const partitions = [...new Set([...batch.increments.keys()].map(partitionOf))]
          state.attempts.push({ id: batch.id, partitions })
          const down = partitions.find((p) => state.down.has(p))
          if (down !== undefined) return new StoreUnavailable({ node: down, reason: "connection refused" })
          if (state.refusing !== undefined)
            return new StoreUnavailable({ node: partitions[0]!, reason: state.refusing })
          return Effect.zipRight(
            memory.applyBatch(batch),
            Effect.suspend(() => {
              if (state.failAfterApply === 0) return Effect.void
              state.failAfterApply--
              return new StoreUnavailable({ node: partitions.join(","), reason: "no answer in time" })
            })
          )
        })
    }
    const stored = (pollId: string) => Effect.map(memory.results(poll(pollId)), (r) => r.counts)
    /** The write-behind buffer over this store, in the current scope. */
    const buffered = (options: WriteBehind.WriteBehindOptions, journal?: Journal.JournalShape) =>
      Effect.gen(function* () {
        const buffer = yield* WriteBehind.make(store, options, journal)
        // Runs before the buffer's own finalizer: a test that fails while the store is down still ends with a
        // shutdown flush that succeeds, rather than one whose retries wait on the test clock for ever.
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            state.down.clear()
            state.refusing = undefined
            state.failAfterApply = 0
          })
        )
        return buffer
      })
    return { store, memory, state, stored, buffered }
  })

/** A journal that records nothing and counts compactions: the write-behind buffer compacts once per flush round. */
const makeRoundCounter = () => {
  const rounds = { count: 0 }
  const journal: Journal.JournalShape = {
    ...Journal.none,
    compact: () => Effect.sync(() => void rounds.count++)
  }
  return { journal, rounds }
}

const voteMany = (store: VoteStoreShape, pollId: string, options: Record<string, number>) =>
  Effect.forEach(Object.entries(options), ([o, n]) => Effect.repeatN(store.vote(poll(pollId), option(o)), n - 1), {
    discard: true
  })

const countsOf = (store: VoteStoreShape, pollId: string) => Effect.map(store.results(poll(pollId)), (r) => r.counts)

describe("WriteBehind", () => {
  it.scoped(
    "writes a vote to the store one flush interval after it, not before: the first flush waits one interval",
    () =>
      Effect.gen(function* () {
        const inner = yield* makeInner()
        const { journal, rounds } = makeRoundCounter()
        const store = yield* inner.buffered({ flushInterval: FLUSH }, journal)
        const startRounds = rounds.count

        yield* voteMany(store, "p", { A: 2, B: 1 })
        expect(yield* inner.stored("p")).toEqual({})
        expect(yield* countsOf(store, "p")).toEqual({ A: 2, B: 1 })

        yield* TestClock.adjust(Duration.subtract(FLUSH, Duration.millis(1)))
        expect(rounds.count - startRounds).toBe(0)
        expect(yield* inner.stored("p")).toEqual({})
        expect(inner.state.attempts).toEqual([])

        yield* TestClock.adjust(Duration.millis(1))
        expect(rounds.count - startRounds).toBe(1)
        expect(yield* inner.stored("p")).toEqual({ A: 2, B: 1 })
        expect(yield* countsOf(store, "p")).toEqual({ A: 2, B: 1 })

        // Rounds keep coming one interval apart.
        yield* store.vote(poll("p"), option("C"))
        yield* TestClock.adjust(Duration.subtract(FLUSH, Duration.millis(1)))
        expect(yield* inner.stored("p")).toEqual({ A: 2, B: 1 })
        yield* TestClock.adjust(Duration.millis(1))
        expect(rounds.count - startRounds).toBe(2)
        expect(yield* inner.stored("p")).toEqual({ A: 2, B: 1, C: 1 })
        expect(inner.state.attempts).toHaveLength(2)
      })
  )

  it.scoped("reads the store's counts plus the pending votes at any time", () =>
    Effect.gen(function* () {
      const inner = yield* makeInner()
      const store = yield* inner.buffered({ flushInterval: FLUSH })

      expect(yield* store.results(poll("p"))).toMatchObject({ counts: {}, servedVia: "in_memory" })
      yield* voteMany(store, "p", { A: 3 })
      yield* TestClock.adjust(FLUSH)
      expect(yield* inner.stored("p")).toEqual({ A: 3 })

      yield* voteMany(store, "p", { A: 1, B: 2 })
      // Votes that reached the store another way (another instance) show up too.
      yield* inner.memory.vote(poll("p"), option("B"))
      yield* inner.memory.vote(poll("p"), option("C"))
      expect(yield* inner.stored("p")).toEqual({ A: 3, B: 1, C: 1 })
      expect(yield* store.results(poll("p"))).toEqual({ counts: { A: 4, B: 3, C: 1 }, servedVia: "in_memory" })
      expect((yield* store.health).pendingVotes).toBe(3)

      yield* TestClock.adjust(FLUSH)
      expect(yield* inner.stored("p")).toEqual({ A: 4, B: 3, C: 1 })
      expect(yield* countsOf(store, "p")).toEqual({ A: 4, B: 3, C: 1 })
      expect((yield* store.health).pendingVotes).toBe(0)
    })
  )

  it.effect("flushes what is pending when its scope closes", () =>
    Effect.gen(function* () {
      const inner = yield* makeInner()
      const scope = yield* Scope.make()
      const store = yield* WriteBehind.make(inner.store, { flushInterval: FLUSH }).pipe(Scope.extend(scope))
      yield* voteMany(store, "p", { A: 2 })
      yield* voteMany(store, "q", { B: 1 })
      expect(yield* inner.stored("p")).toEqual({})

      yield* Scope.close(scope, Exit.void)
      expect(yield* inner.stored("p")).toEqual({ A: 2 })
      expect(yield* inner.stored("q")).toEqual({ B: 1 })
      expect(inner.state.attempts).toHaveLength(1)
    })
  )

  it.scoped("keeps the votes while the store refuses batches, and applies them exactly once when it is back", () =>
    Effect.gen(function* () {
      const inner = yield* makeInner()
      const store = yield* inner.buffered({ flushInterval: FLUSH })
      inner.state.down.add("only")

      yield* voteMany(store, "p", { A: 2, B: 1 })
      yield* TestClock.adjust(ROUND)
      yield* voteMany(store, "p", { A: 1 })
      yield* voteMany(store, "q", { Z: 1 })
      yield* TestClock.adjust(ROUND)
      yield* TestClock.adjust(ROUND)

      expect(inner.state.attempts.length).toBeGreaterThanOrEqual(3)
      expect(yield* inner.stored("p")).toEqual({})
      expect(yield* countsOf(store, "p")).toEqual({ A: 3, B: 1 })
      expect(yield* countsOf(store, "q")).toEqual({ Z: 1 })
      expect((yield* store.health).pendingVotes).toBe(5)

      inner.state.down.clear()
      yield* TestClock.adjust(ROUND)
      expect(yield* inner.stored("p")).toEqual({ A: 3, B: 1 })
      expect(yield* inner.stored("q")).toEqual({ Z: 1 })
      expect((yield* store.health).pendingVotes).toBe(0)

      // Later rounds send nothing more.
      const attempts = inner.state.attempts.length
      yield* TestClock.adjust(Duration.times(FLUSH, 3))
      expect(inner.state.attempts).toHaveLength(attempts)
      expect(yield* inner.stored("p")).toEqual({ A: 3, B: 1 })
      expect(yield* countsOf(store, "p")).toEqual({ A: 3, B: 1 })
    })
  )

  it.scoped("retries a failed batch flushRetries times within one round, 100 ms after the failure and doubling", () =>
    Effect.gen(function* () {
      const inner = yield* makeInner()
      const { journal, rounds } = makeRoundCounter()
      const store = yield* inner.buffered({ flushInterval: FLUSH, flushRetries: 4 }, journal)
      const startRounds = rounds.count
      inner.state.down.add("only")
      yield* voteMany(store, "p", { A: 1 })

      // The round starts at 1 s; its retries follow 100, 200, 400 and 800 ms apart: the last at 2.5 s.
      yield* TestClock.adjust(FLUSH)
      expect(inner.state.attempts).toHaveLength(1)
      yield* TestClock.adjust(Duration.millis(1499))
      expect(inner.state.attempts).toHaveLength(4)
      yield* TestClock.adjust(Duration.millis(1))
      expect(inner.state.attempts).toHaveLength(5)
      expect(rounds.count - startRounds).toBe(1)
      expect(new Set(inner.state.attempts.map((a) => a.id)).size).toBe(1)

      // Nothing more until the next round, one interval after this one ended.
      yield* TestClock.adjust(Duration.subtract(FLUSH, Duration.millis(1)))
      expect(inner.state.attempts).toHaveLength(5)
      yield* TestClock.adjust(Duration.millis(1))
      expect(inner.state.attempts).toHaveLength(6)

      // Back within the round: its first retry goes through.
      inner.state.down.clear()
      yield* TestClock.adjust(Duration.millis(100))
      expect(inner.state.attempts).toHaveLength(7)
      expect(yield* inner.stored("p")).toEqual({ A: 1 })
    })
  )

  it.scoped("with no flush retries, a failed batch waits for the next round", () =>
    Effect.gen(function* () {
      const inner = yield* makeInner()
      const store = yield* inner.buffered({ flushInterval: FLUSH, flushRetries: 0 })
      inner.state.down.add("only")
      yield* voteMany(store, "p", { A: 1 })

      yield* TestClock.adjust(FLUSH)
      expect(inner.state.attempts).toHaveLength(1)
      yield* TestClock.adjust(Duration.subtract(FLUSH, Duration.millis(1)))
      expect(inner.state.attempts).toHaveLength(1)
      yield* TestClock.adjust(Duration.millis(1))
      expect(inner.state.attempts).toHaveLength(2)

      inner.state.down.clear()
      yield* TestClock.adjust(FLUSH)
      expect(yield* inner.stored("p")).toEqual({ A: 1 })
    })
  )

  it.scoped("does not count twice a batch that was applied but reported as failed, when it is sent again", () =>
    Effect.gen(function* () {
      const inner = yield* makeInner()
      const store = yield* inner.buffered({ flushInterval: FLUSH })
      const accepted = { A: 4, B: 2 }
      yield* voteMany(store, "p", accepted)
      // The first five sends all land in the store, but none is confirmed: two whole rounds fail.
      inner.state.failAfterApply = 5

      yield* TestClock.adjust(ROUND)
      expect(yield* inner.stored("p")).toEqual(accepted)
      // The batch is in the store and still unconfirmed here: a read must count it once.
      expect(yield* countsOf(store, "p")).toEqual(accepted)
      yield* voteMany(store, "p", { A: 1 })
      expect(yield* countsOf(store, "p")).toEqual({ A: 5, B: 2 })

      yield* TestClock.adjust(ROUND)
      yield* TestClock.adjust(ROUND)
      yield* TestClock.adjust(ROUND)
      expect(inner.state.failAfterApply).toBe(0)
      expect(yield* inner.stored("p")).toEqual({ A: 5, B: 2 })
      expect(yield* countsOf(store, "p")).toEqual({ A: 5, B: 2 })
      expect((yield* store.health).pendingVotes).toBe(0)

      // The retries resent the same batch under the same id.
      const first = inner.state.attempts[0]!.id
      expect(inner.state.attempts.filter((a) => a.id === first).length).toBe(6)
    })
  )

  it.scoped(
    "at maxEntries refuses a vote that needs a new entry with BufferFull, and still takes votes for a pending one",
    () =>
      Effect.gen(function* () {
        const inner = yield* makeInner()
        const store = yield* inner.buffered({ flushInterval: FLUSH, maxEntries: 4 })
        inner.state.down.add("only")

        // Two entries: half the cap starts an early flush, which fails and keeps them as an unconfirmed batch.
        yield* voteMany(store, "p", { A: 1, B: 1 })
        yield* TestClock.adjust(ROUND)
        expect(inner.state.attempts.length).toBeGreaterThan(0)
        yield* voteMany(store, "p", { C: 1, D: 1 })

        const refusedNewOption = yield* Effect.flip(store.vote(poll("p"), option("E")))
        expect(refusedNewOption).toBeInstanceOf(BufferFull)
        expect((refusedNewOption as BufferFull).pending).toBe(4)
        expect(yield* Effect.flip(store.vote(poll("q"), option("A")))).toBeInstanceOf(BufferFull)

        yield* voteMany(store, "p", { C: 2, D: 1 })
        expect(yield* countsOf(store, "p")).toEqual({ A: 1, B: 1, C: 3, D: 2 })
        expect(yield* countsOf(store, "q")).toEqual({})
        expect((yield* store.health).pendingVotes).toBe(7)

        inner.state.down.clear()
        yield* TestClock.adjust(ROUND)
        expect(yield* inner.stored("p")).toEqual({ A: 1, B: 1, C: 3, D: 2 })
        expect(yield* inner.stored("q")).toEqual({})

        // Room again.
        yield* store.vote(poll("p"), option("E"))
        yield* store.vote(poll("q"), option("A"))
        yield* TestClock.adjust(ROUND)
        expect(yield* inner.stored("p")).toEqual({ A: 1, B: 1, C: 3, D: 2, E: 1 })
        expect(yield* inner.stored("q")).toEqual({ A: 1 })
      })
  )

  it.scoped("a round flushes what was pending when it began; votes that arrive during it wait for the next", () =>
    Effect.gen(function* () {
      const inner = yield* makeInner()
      // Each of the first five batches the store applies is followed by a vote on a new poll, as under load.
      let buffer: VoteStoreShape | undefined
      let arrivals = 0
      const busy: VoteStoreShape = {
        ...inner.store,
        applyBatch: (batch) =>
          Effect.zipRight(
            inner.store.applyBatch(batch),
            Effect.suspend(() =>
              arrivals < 5 ? Effect.orDie(buffer!.vote(poll(`late${++arrivals}`), option("A"))) : Effect.void
            )
          )
      }
      const { journal, rounds } = makeRoundCounter()
      buffer = yield* WriteBehind.make(busy, { flushInterval: FLUSH, maxPollsPerBatch: 2 }, journal)
      const startRounds = rounds.count
      for (const p of ["a", "b", "c", "d"]) yield* buffer.vote(poll(p), option("A"))

      yield* TestClock.adjust(FLUSH)
      expect(rounds.count - startRounds).toBe(1)
      // Four polls in batches of two: two batches; the two votes they let in are left for the next round.
      expect(inner.state.attempts).toHaveLength(2)
      expect(arrivals).toBe(2)
      expect((yield* buffer.health).pendingVotes).toBe(2)
      for (const p of ["a", "b", "c", "d"]) expect(yield* inner.stored(p)).toEqual({ A: 1 })
      expect(yield* inner.stored("late1")).toEqual({})

      yield* TestClock.adjust(FLUSH)
      expect(rounds.count - startRounds).toBe(2)
      expect(inner.state.attempts).toHaveLength(3)
      for (const n of [1, 2]) expect(yield* inner.stored(`late${n}`)).toEqual({ A: 1 })
      expect((yield* buffer.health).pendingVotes).toBe(1)
    })
  )

  it.scoped("flushes a healthy partition while another is down, and the other once it is back", () =>
    Effect.gen(function* () {
      const inner = yield* makeInner((pollId) => (pollId.startsWith("left") ? "left" : "right"), ["left", "right"])
      const store = yield* inner.buffered({ flushInterval: FLUSH })
      inner.state.down.add("right")

      yield* voteMany(store, "left-1", { A: 1 })
      yield* voteMany(store, "right-1", { A: 2 })
      yield* TestClock.adjust(ROUND)
      expect(yield* inner.stored("left-1")).toEqual({ A: 1 })
      expect(yield* inner.stored("right-1")).toEqual({})
      expect(yield* countsOf(store, "right-1")).toEqual({ A: 2 })

      // The left partition goes on flushing while the right one's batch waits.
      yield* voteMany(store, "left-1", { A: 1, B: 1 })
      yield* voteMany(store, "left-2", { A: 1 })
      yield* voteMany(store, "right-1", { B: 1 })
      yield* TestClock.adjust(ROUND)
      yield* TestClock.adjust(ROUND)
      expect(yield* inner.stored("left-1")).toEqual({ A: 2, B: 1 })
      expect(yield* inner.stored("left-2")).toEqual({ A: 1 })
      expect(yield* inner.stored("right-1")).toEqual({})
      expect(yield* countsOf(store, "right-1")).toEqual({ A: 2, B: 1 })
      expect((yield* store.health).pendingVotes).toBe(3)
      // No batch mixed the partitions, and the right one's were all refused.
      expect(inner.state.attempts.every((a) => a.partitions.length === 1)).toBe(true)
      expect(inner.state.attempts.filter((a) => a.partitions[0] === "right").length).toBeGreaterThanOrEqual(2)

      inner.state.down.clear()
      yield* TestClock.adjust(ROUND)
      expect(yield* inner.stored("right-1")).toEqual({ A: 2, B: 1 })
      expect(yield* inner.stored("left-1")).toEqual({ A: 2, B: 1 })
      expect((yield* store.health).pendingVotes).toBe(0)
      yield* TestClock.adjust(Duration.times(FLUSH, 3))
      expect(yield* inner.stored("right-1")).toEqual({ A: 2, B: 1 })
    })
  )

  it.scoped("a vote whose journal line cannot be written is refused and is in no read, batch or buffer count", () =>
    Effect.gen(function* () {
      const inner = yield* makeInner()
      const disk = { full: false, durable: 0 }
      const journal: Journal.JournalShape = {
        ...Journal.none,
        // Like the file journal: the vote is counted at the moment its line is durable, and the append succeeds after.
        append: (_pollId, _optionId, durable) =>
          Effect.suspend(() => {
            if (disk.full) return new JournalFailed({ reason: "ENOSPC: no space left on device, write" })
            disk.durable++
            durable()
            return Effect.void
          }),
        health: Effect.sync(() => ({
          ok: !disk.full,
          failingSinceMsAgo: disk.full ? 0 : null,
          lastFailureMsAgo: disk.full ? 0 : null,
          lastError: disk.full ? "ENOSPC" : null
        }))
      }
      const store = yield* inner.buffered({ flushInterval: FLUSH }, journal)

      yield* voteMany(store, "p", { A: 1 })
      disk.full = true
      const refused = yield* Effect.flip(store.vote(poll("p"), option("B")))
      expect(refused).toBeInstanceOf(JournalFailed)
      expect(yield* Effect.flip(store.vote(poll("p"), option("A")))).toBeInstanceOf(JournalFailed)
      expect(yield* countsOf(store, "p")).toEqual({ A: 1 })
      const health = yield* store.health
      expect(health.pendingVotes).toBe(1)
      expect(health.journal).toMatchObject({ ok: false, lastError: "ENOSPC" })

      disk.full = false
      yield* TestClock.adjust(FLUSH)
      expect(yield* inner.stored("p")).toEqual({ A: 1 })
      expect((yield* store.health).journal?.ok).toBe(true)

      // The disk has room again: the retry is counted, once.
      yield* voteMany(store, "p", { B: 1 })
      expect(yield* countsOf(store, "p")).toEqual({ A: 1, B: 1 })
      yield* TestClock.adjust(FLUSH)
      expect(yield* inner.stored("p")).toEqual({ A: 1, B: 1 })
      expect(disk.durable).toBe(2)
      expect((yield* store.health).pendingVotes).toBe(0)
    })
  )

  it.scoped("the flush loop and the early flush outlive a compaction that dies: the next interval flushes again", () =>
    Effect.gen(function* () {
      const inner = yield* makeInner()
      let compactions = 0
      const journal: Journal.JournalShape = {
        ...Journal.none,
        // Every compaction after the one at start-up throws, as sync fs calls on a full disk do.
        compact: () =>
          Effect.sync(() => {
            if (compactions++ > 0) throw new Error("ENOSPC: no space left on device, open")
          })
      }
      const store = yield* inner.buffered({ flushInterval: FLUSH, maxEntries: 4 }, journal)

      yield* voteMany(store, "p", { A: 1 })
      yield* TestClock.adjust(FLUSH)
      expect(yield* inner.stored("p")).toEqual({ A: 1 })
      expect(compactions).toBe(2)

      yield* voteMany(store, "p", { A: 1 })
      yield* TestClock.adjust(FLUSH)
      expect(yield* inner.stored("p")).toEqual({ A: 2 })

      // Two entries reach half the cap: an early flush runs (and its compaction dies too).
      yield* voteMany(store, "q", { A: 1, B: 1 })
      yield* TestClock.adjust(Duration.millis(1))
      expect(yield* inner.stored("q")).toEqual({ A: 1, B: 1 })
      yield* voteMany(store, "q", { C: 1, D: 1 })
      yield* TestClock.adjust(Duration.millis(1))
      expect(yield* inner.stored("q")).toEqual({ A: 1, B: 1, C: 1, D: 1 })

      yield* voteMany(store, "p", { B: 1 })
      yield* TestClock.adjust(FLUSH)
      expect(yield* inner.stored("p")).toEqual({ A: 2, B: 1 })
      expect(compactions).toBeGreaterThanOrEqual(5)
    })
  )

  it.scoped("health shows flushes that keep failing and for how long, then clears; each vote is applied once", () =>
    Effect.gen(function* () {
      const inner = yield* makeInner()
      const store = yield* inner.buffered({ flushInterval: FLUSH })
      const flushOf = Effect.map(store.health, (h) => h.flushes?.find((f) => f.node === "only"))
      const OOM = "apply batch failed: OOM command not allowed when used memory > 'maxmemory'."

      expect(yield* flushOf).toEqual({
        node: "only",
        pendingVotes: 0,
        failing: false,
        failingSinceMsAgo: null,
        lastFailureMsAgo: null,
        lastSuccessMsAgo: null,
        lastError: null
      })
      yield* voteMany(store, "p", { A: 2, B: 1 })
      yield* TestClock.adjust(FLUSH)
      expect((yield* flushOf)?.lastSuccessMsAgo).toBe(0)

      inner.state.refusing = OOM
      yield* voteMany(store, "p", { A: 1 })
      yield* TestClock.adjust(ROUND)
      // One failed round (its retries included) is not yet "keeps failing".
      const once = (yield* flushOf)!
      expect(once).toMatchObject({
        node: "only",
        pendingVotes: 1,
        failing: false,
        lastError: expect.stringContaining("OOM")
      })
      expect(once.failingSinceMsAgo).toBeGreaterThanOrEqual(0)
      expect(once.lastSuccessMsAgo).toBeGreaterThan(once.failingSinceMsAgo!)

      yield* voteMany(store, "p", { C: 1 })
      yield* TestClock.adjust(ROUND)
      const twice = (yield* flushOf)!
      expect(twice).toMatchObject({ pendingVotes: 2, failing: true, lastError: expect.stringContaining("OOM") })
      expect(twice.failingSinceMsAgo).toBeGreaterThanOrEqual(Duration.toMillis(FLUSH))
      expect(twice.lastFailureMsAgo).toBeLessThan(twice.failingSinceMsAgo!)
      // The age keeps growing while nothing succeeds.
      yield* TestClock.adjust(Duration.millis(250))
      expect((yield* flushOf)!.failingSinceMsAgo).toBe(twice.failingSinceMsAgo! + 250)
      expect((yield* store.health).pendingVotes).toBe(2)
      expect(yield* countsOf(store, "p")).toEqual({ A: 3, B: 1, C: 1 })
      expect(yield* inner.stored("p")).toEqual({ A: 2, B: 1 })

      inner.state.refusing = undefined
      yield* TestClock.adjust(ROUND)
      const recovered = (yield* flushOf)!
      expect(recovered).toMatchObject({
        pendingVotes: 0,
        failing: false,
        failingSinceMsAgo: null,
        lastError: expect.stringContaining(OOM)
      })
      expect(recovered.lastSuccessMsAgo).toBeLessThan(recovered.lastFailureMsAgo!)
      expect(yield* inner.stored("p")).toEqual({ A: 3, B: 1, C: 1 })
      yield* TestClock.adjust(Duration.times(FLUSH, 3))
      expect(yield* inner.stored("p")).toEqual({ A: 3, B: 1, C: 1 })
      // The refused batch went out again under its own id until it was taken; the round after sent the rest.
      const ids = inner.state.attempts.map((a) => a.id)
      expect(new Set(ids).size).toBe(3)
    })
  )

  it.scoped(
    "a batch whose seal record cannot be written is kept, reported and sent once it can: none lost or doubled",
    () =>
      Effect.gen(function* () {
        const inner = yield* makeInner()
        const disk = { full: false }
        const journal: Journal.JournalShape = {
          ...Journal.none,
          sealed: () =>
            disk.full ? new JournalFailed({ reason: "ENOSPC: no space left on device, write" }) : Effect.void
        }
        const store = yield* inner.buffered({ flushInterval: FLUSH }, journal)
        yield* voteMany(store, "p", { A: 2, B: 1 })
        disk.full = true
        yield* TestClock.adjust(ROUND)
        yield* TestClock.adjust(ROUND)
        // Never sent while its record could not be made durable, and still counted in reads.
        expect(inner.state.attempts).toEqual([])
        expect(yield* countsOf(store, "p")).toEqual({ A: 2, B: 1 })
        const flush = (yield* store.health).flushes?.find((f) => f.node === "only")
        expect(flush).toMatchObject({ pendingVotes: 3, failing: true, lastError: expect.stringContaining("ENOSPC") })

        disk.full = false
        yield* TestClock.adjust(ROUND)
        expect(yield* inner.stored("p")).toEqual({ A: 2, B: 1 })
        yield* TestClock.adjust(Duration.times(FLUSH, 2))
        expect(yield* inner.stored("p")).toEqual({ A: 2, B: 1 })
        expect(inner.state.attempts).toHaveLength(1)
        expect((yield* store.health).flushes?.find((f) => f.node === "only")?.failing).toBe(false)
      })
  )
})

describe("WriteBehind: a poll's first votes", () => {
  /** The memory store, recording each `optionsOf` call and failing every per-poll read (none should be needed). */
  const makeCounting = Effect.map(makeMemory, (memory) => {
    const calls: Array<ReadonlyArray<string>> = []
    const store: VoteStoreShape = {
      ...memory,
      exactResults: () => Effect.dieMessage("a first vote read its poll's options on its own"),
      optionsOf: (pollIds) => {
        calls.push(pollIds)
        return memory.optionsOf(pollIds)
      }
    }
    return { store, memory, calls }
  })

  it.scoped("first votes on many new polls at once share one read of their options", () =>
    Effect.gen(function* () {
      const { store: inner, calls } = yield* makeCounting
      const store = yield* WriteBehind.make(inner, { flushInterval: FLUSH })
      const polls = Array.from({ length: 100 }, (_, i) => poll(`first-${i}`))
      yield* Effect.forEach(polls, (p) => store.vote(p, option("A")), { concurrency: "unbounded", discard: true })
      expect(calls).toHaveLength(1)
      expect([...calls[0]!].sort()).toEqual([...polls].sort())
      // Known now: more votes on them read nothing.
      yield* Effect.forEach(polls, (p) => store.vote(p, option("B")), { concurrency: "unbounded", discard: true })
      expect(calls).toHaveLength(1)
      expect((yield* store.results(polls[7]!)).counts).toEqual({ A: 1, B: 1 })
    })
  )

  it.scoped("a shared read still holds each poll to the cap: a full poll refuses a new option, takes a known one", () =>
    Effect.gen(function* () {
      const { store: inner, memory, calls } = yield* makeCounting
      const full = poll("full")
      yield* Effect.forEach(
        Array.from({ length: MAX_OPTIONS_PER_POLL }, (_, i) => option(`o${i}`)),
        (o) => memory.vote(full, o),
        { discard: true }
      )
      const store = yield* WriteBehind.make(inner, { flushInterval: FLUSH })
      const [refused, known, elsewhere] = yield* Effect.all(
        [
          Effect.exit(store.vote(full, option("one-too-many"))),
          Effect.exit(store.vote(full, option("o3"))),
          Effect.exit(store.vote(poll("roomy"), option("one-too-many")))
        ],
        { concurrency: "unbounded" }
      )
      expect(calls).toHaveLength(1)
      expect(Exit.isFailure(refused) && Cause.squash(refused.cause)).toBeInstanceOf(TooManyOptions)
      expect(known).toEqual(Exit.void)
      expect(elsewhere).toEqual(Exit.void)
      expect((yield* store.results(full)).counts["o3"]).toBe(2)
    })
  )

  it.scoped(
    "a read that raced a flush is read again while that still fits in 2 s; one that took longer is a 503, never a late or inexact answer",
    () =>
      Effect.gen(function* () {
        const inner = yield* makeInner()
        const delay = { ms: 0 }
        const slow = <A, E>(read: Effect.Effect<A, E>) =>
          Effect.zipRight(
            Effect.suspend(() => Effect.sleep(Duration.millis(delay.ms))),
            read
          )
        const store = yield* WriteBehind.make(
          {
            ...inner.store,
            results: (pollId) => slow(inner.store.results(pollId)),
            exactResults: (pollId, batchIds) => slow(inner.store.exactResults(pollId, batchIds))
          },
          { flushInterval: FLUSH }
        )
        yield* store.vote(poll("p"), option("A"))

        // Begun 50 ms before the flush, answered 50 ms after it: read again (once more 100 ms), exact.
        delay.ms = 100
        yield* TestClock.adjust(Duration.millis(950))
        const quick = yield* Effect.fork(store.results(poll("p")))
        yield* TestClock.adjust(Duration.millis(300))
        expect((yield* quick).counts).toEqual({ A: 1 })
        expect(yield* inner.stored("p")).toEqual({ A: 1 })

        // Begun 400 ms before the next flush, answered when it is over: another read could end past 2 s.
        yield* store.vote(poll("p"), option("A"))
        delay.ms = 500
        yield* TestClock.adjust(Duration.millis(350))
        const late = yield* Effect.fork(Effect.exit(store.results(poll("p"))))
        yield* TestClock.adjust(Duration.millis(1000))
        const exit = yield* late
        expect(Exit.isFailure(exit) && Cause.squash(exit.cause)).toBeInstanceOf(StoreUnavailable)
        delay.ms = 0
        expect((yield* store.results(poll("p"))).counts).toEqual({ A: 2 })
      })
  )

  it.scoped(
    "the store forgets a batch only once the journal holds its confirmation: a replay must still find its markers",
    () =>
      Effect.gen(function* () {
        const inner = yield* makeInner()
        const events: Array<string> = []
        const disk = { failing: true }
        const journal: Journal.JournalShape = {
          ...Journal.none,
          confirmed: (id) =>
            Effect.suspend(() => {
              if (disk.failing) return new JournalFailed({ reason: "EIO: i/o error, write" })
              events.push(`confirmed ${id}`)
              return Effect.void
            })
        }
        const store = yield* WriteBehind.make(
          { ...inner.store, forgetBatch: (batch) => Effect.sync(() => void events.push(`forget ${batch.id}`)) },
          { flushInterval: FLUSH },
          journal
        )
        yield* store.vote(poll("p"), option("A"))
        yield* TestClock.adjust(ROUND)
        expect(yield* inner.stored("p")).toEqual({ A: 1 })
        expect(events).toEqual([])

        disk.failing = false
        yield* store.vote(poll("p"), option("B"))
        yield* TestClock.adjust(ROUND)
        expect(yield* inner.stored("p")).toEqual({ A: 1, B: 1 })
        const [confirmed, forgotten] = events
        expect(events).toHaveLength(2)
        expect(confirmed).toMatch(/^confirmed /)
        expect(forgotten).toBe(`forget ${confirmed!.slice("confirmed ".length)}`)
      })
  )
})
