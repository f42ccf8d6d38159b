import { it, layer } from "@effect/vitest"
import { Effect, Exit, type Layer } from "effect"
import * as fs from "node:fs"
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect } from "vitest"
import { JournalFailed, type OptionId, type PollId } from "../../src/Domain.js"
import * as Journal from "../../src/VoteStore/Journal.js"
import { type Batch } from "../../src/VoteStore.js"

const p = (s: string) => s as PollId
const o = (s: string) => s as OptionId
const batch = (id: string, entries: Array<[string, string, number]>): Batch => {
  const increments = new Map<PollId, Map<OptionId, number>>()
  for (const [poll, option, n] of entries) {
    if (!increments.has(p(poll))) increments.set(p(poll), new Map())
    increments.get(p(poll))!.set(o(option), n)
  }
  return { id, increments }
}
const noop = () => {}
const flat = (r: Journal.Recovered) =>
  Object.fromEntries([...r.pending].flatMap(([poll, options]) => [...options].map(([opt, n]) => [`${poll}/${opt}`, n])))

describe("Journal.replay", () => {
  it("rebuilds pending votes, moves sealed ones into their batch, and forgets confirmed batches", () => {
    const b2 = batch("i-2", [["100", "B", 1]])
    const text = [
      "v 100 A",
      "v 100 A",
      "v 100 B",
      `b redis i-1 ${JSON.stringify([["100", [["A", 2]]]])}`,
      "v 200 C",
      `b redis i-2 ${JSON.stringify([["100", [["B", 1]]]])}`,
      "c i-1",
      "v 100 A",
      ""
    ].join("\n")
    const r = Journal.replay(text)
    expect(flat(r)).toEqual({ "100/A": 1, "200/C": 1 })
    expect(r.batches.map((b) => b.batch.id)).toEqual(["i-2"])
    expect([...r.batches[0]!.batch.increments]).toEqual([...b2.increments])
  })

  it("ignores a torn last line", () => {
    expect(flat(Journal.replay('v 100 A\nv 100 A\nb redis i-9 [["100"'))).toEqual({ "100/A": 2 })
  })

  it("ignores a torn last line that still parses: only a record with its newline was ever acknowledged", () => {
    // `v 100 AB` cut to `v 100 A` would count a vote for another option; `c i-12` cut to `c i-1` would drop a batch.
    expect(flat(Journal.replay("v 100 A\nv 100 A"))).toEqual({ "100/A": 1 })
    const sealed = `b redis i-1 ${Journal.encode(batch("i-1", [["100", "A", 1]]).increments)}\n`
    const recovered = Journal.replay(`v 100 A\n${sealed}c i-1`)
    expect(recovered.batches.map((b) => b.batch.id)).toEqual(["i-1"])
  })

  it("moves a batch's votes once when it was sealed twice (once by a compaction, once by its own record)", () => {
    const sealed = `b redis i-1 ${Journal.encode(batch("i-1", [["100", "A", 2]]).increments)}\n`
    const recovered = Journal.replay(`p ${JSON.stringify([["100", [["A", 3]]]])}\n${sealed}${sealed}`)
    expect(flat(recovered)).toEqual({ "100/A": 1 })
    expect(recovered.batches.map((b) => b.batch.id)).toEqual(["i-1"])
  })
})

describe("Journal.makeFile", () => {
  it.effect("survives a reopen: appended votes, a sealed batch and a compaction come back as they were", () =>
    Effect.gen(function* () {
      const dir = mkdtempSync(join(tmpdir(), "livepoll-journal-test-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const sealed = batch("i-1", [["100", "A", 2]])
      yield* Effect.scoped(
        Effect.gen(function* () {
          const journal = yield* Journal.makeFile(dir)
          yield* Effect.all([journal.append(p("100"), o("A"), noop), journal.append(p("100"), o("A"), noop)], {
            concurrency: "unbounded"
          })
          yield* journal.append(p("7"), o("Z"), noop)
          yield* journal.sealed("redis", sealed)
        })
      )
      const reopened = yield* Effect.scoped(Effect.flatMap(Journal.makeFile(dir), (j) => j.recover))
      expect(flat(reopened)).toEqual({ "7/Z": 1 })
      expect(reopened.batches.map((b) => b.batch.id)).toEqual(["i-1"])

      // Compaction rewrites the file as the given state, and the state is what a later start recovers.
      yield* Effect.scoped(
        Effect.gen(function* () {
          const journal = yield* Journal.makeFile(dir)
          yield* journal.compact(() => ({
            pending: [new Map([[p("7"), new Map([[o("Z"), 3]])]])],
            batches: []
          }))
        })
      )
      expect(readFileSync(join(dir, "votes.journal"), "utf8")).not.toContain("i-1")
      const compacted = yield* Effect.scoped(Effect.flatMap(Journal.makeFile(dir), (j) => j.recover))
      expect(flat(compacted)).toEqual({ "7/Z": 3 })
      expect(compacted.batches).toEqual([])
    }).pipe(Effect.scoped)
  )
})

const enospc = (call: string) =>
  Object.assign(new Error(`ENOSPC: no space left on device, ${call}`), { code: "ENOSPC" }) as NodeJS.ErrnoException

/**
 * node:fs with faults on cue, as on a full disk: a write that keeps `writeKeeps` bytes of its data and then fails,
 * an fdatasync or ftruncate that fails, a compaction whose new file cannot be written. `hold` keeps writes waiting
 * until `release`.
 */
const makeFaultyFs = () => {
  const faults = {
    writeKeeps: undefined as number | undefined,
    sync: false,
    truncate: false,
    compaction: false,
    held: undefined as Array<() => void> | undefined,
    writes: 0
  }
  const files: Journal.JournalFs = {
    ...Journal.nodeFs,
    write: (fd, data, offset, length, position, callback) => {
      const go = () => {
        faults.writes++
        if (faults.writeKeeps === undefined) return Journal.nodeFs.write(fd, data, offset, length, position, callback)
        const kept = Math.min(faults.writeKeeps, length)
        faults.writeKeeps = 0
        if (kept === 0) return callback(enospc("write"), 0)
        // The kernel reports what it wrote, and the next write the full disk.
        fs.writeSync(fd, data, offset, kept)
        callback(null, kept)
      }
      if (faults.held === undefined) go()
      else faults.held.push(go)
    },
    fdatasync: (fd, callback) =>
      faults.sync ? setImmediate(() => callback(enospc("fdatasync"))) : Journal.nodeFs.fdatasync(fd, callback),
    ftruncate: (fd, length, callback) =>
      faults.truncate
        ? setImmediate(() => callback(enospc("ftruncate")))
        : Journal.nodeFs.ftruncate(fd, length, callback),
    writeSync: (fd, data, offset, length) => {
      if (faults.compaction) throw enospc("write")
      return Journal.nodeFs.writeSync(fd, data, offset, length)
    }
  }
  const release = () => {
    const held = faults.held ?? []
    faults.held = undefined
    for (const go of held) go()
  }
  return { faults, files, release }
}

const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "livepoll-journal-test-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)
const textOf = (dir: string) => readFileSync(join(dir, "votes.journal"), "utf8")
const reopen = (dir: string) => Effect.scoped(Effect.flatMap(Journal.makeFile(dir), (j) => j.recover))

describe("Journal.makeFile on a failing disk", () => {
  it.scoped("a write that fails part-way is cut back: the vote is refused, never counted, and never replayed", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const { faults, files } = makeFaultyFs()
      const durable: Array<string> = []
      const voted = (option: string) => () => void durable.push(option)
      yield* Effect.scoped(
        Effect.gen(function* () {
          const journal = yield* Journal.makeFile(dir, files)
          yield* journal.append(p("100"), o("A"), voted("A"))
          // Four bytes of the line fit, then the disk is full.
          faults.writeKeeps = 4
          const refused = yield* Effect.flip(journal.append(p("100"), o("BCD"), voted("BCD")))
          expect(refused).toBeInstanceOf(JournalFailed)
          expect(refused.reason).toContain("ENOSPC")
          expect(textOf(dir)).toBe("v 100 A\n")
          expect(yield* journal.health!).toMatchObject({ ok: false, lastError: expect.stringContaining("ENOSPC") })

          // Room again: the next line starts on a clean boundary.
          faults.writeKeeps = undefined
          yield* journal.append(p("100"), o("B"), voted("B"))
          expect(yield* journal.health!).toMatchObject({ ok: true, failingSinceMsAgo: null })
        })
      )
      expect(durable).toEqual(["A", "B"])
      expect(textOf(dir)).toBe("v 100 A\nv 100 B\n")
      expect(flat(yield* reopen(dir))).toEqual({ "100/A": 1, "100/B": 1 })
    })
  )

  it.scoped(
    "a line written whole but whose fdatasync failed is cut off: a restart does not count the refused vote",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir
        const { faults, files } = makeFaultyFs()
        yield* Effect.scoped(
          Effect.gen(function* () {
            const journal = yield* Journal.makeFile(dir, files)
            yield* journal.append(p("100"), o("A"), noop)
            faults.sync = true
            yield* Effect.flip(journal.append(p("100"), o("B"), noop))
            yield* Effect.flip(journal.sealed("redis", batch("i-1", [["100", "A", 1]])))
          })
        )
        expect(textOf(dir)).toBe("v 100 A\n")
        const recovered = yield* reopen(dir)
        expect(flat(recovered)).toEqual({ "100/A": 1 })
        expect(recovered.batches).toEqual([])
      })
  )

  it.scoped("when the tail cannot be cut back either, nothing more is written until it can", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const { faults, files } = makeFaultyFs()
      const journal = yield* Journal.makeFile(dir, files)
      yield* journal.append(p("100"), o("A"), noop)
      faults.writeKeeps = 3
      faults.truncate = true
      yield* Effect.flip(journal.append(p("100"), o("B"), noop))
      const writes = faults.writes
      // The disk has room but the torn bytes are still there: the vote is refused rather than glued to them.
      faults.writeKeeps = undefined
      yield* Effect.flip(journal.append(p("100"), o("C"), noop))
      expect(faults.writes).toBe(writes)
      faults.truncate = false
      yield* journal.append(p("100"), o("D"), noop)
      expect(textOf(dir)).toBe("v 100 A\nv 100 D\n")
    })
  )

  it.scoped("a torn record left by a crash is cut off before the first append, so no later line is glued to it", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      writeFileSync(join(dir, "votes.journal"), "v 100 A\nv 100 B")
      const recovered = yield* Effect.scoped(
        Effect.gen(function* () {
          const journal = yield* Journal.makeFile(dir)
          yield* journal.append(p("200"), o("C"), noop)
          return yield* journal.recover
        })
      )
      expect(flat(recovered)).toEqual({ "100/A": 1 })
      expect(textOf(dir)).toBe("v 100 A\nv 200 C\n")
      expect(flat(yield* reopen(dir))).toEqual({ "100/A": 1, "200/C": 1 })
    })
  )

  it.scoped("a compaction that cannot write its new file keeps the old one, fails nothing, and works next time", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir
      const { faults, files } = makeFaultyFs()
      const state = () => ({ pending: [new Map([[p("100"), new Map([[o("A"), 2]])]])], batches: [] })
      yield* Effect.scoped(
        Effect.gen(function* () {
          const journal = yield* Journal.makeFile(dir, files)
          yield* journal.append(p("100"), o("A"), noop)
          yield* journal.append(p("100"), o("A"), noop)
          faults.compaction = true
          const exit = yield* Effect.exit(journal.compact(state))
          expect(Exit.isSuccess(exit)).toBe(true)
          expect(textOf(dir)).toBe("v 100 A\nv 100 A\n")
          expect(existsSync(join(dir, "votes.journal.tmp"))).toBe(false)
          // The old file is still the journal: appends go on landing in it.
          yield* journal.append(p("100"), o("B"), noop)
          expect(textOf(dir)).toBe("v 100 A\nv 100 A\nv 100 B\n")

          faults.compaction = false
          yield* journal.compact(() => ({
            pending: [
              new Map([
                [
                  p("100"),
                  new Map([
                    [o("A"), 2],
                    [o("B"), 1]
                  ])
                ]
              ])
            ],
            batches: []
          }))
          yield* journal.append(p("100"), o("C"), noop)
        })
      )
      expect(textOf(dir)).toBe(
        `p ${JSON.stringify([
          [
            "100",
            [
              ["A", 2],
              ["B", 1]
            ]
          ]
        ])}\nv 100 C\n`
      )
      expect(flat(yield* reopen(dir))).toEqual({ "100/A": 2, "100/B": 1, "100/C": 1 })
    })
  )

  it.scoped(
    "a compaction asked for mid-write runs after it, its votes counted; lines queued meanwhile go to the new file",
    () =>
      Effect.gen(function* () {
        const dir = yield* tempDir
        const { faults, files, release } = makeFaultyFs()
        const counted = new Map<string, number>()
        const count = (option: string) => () => void counted.set(option, (counted.get(option) ?? 0) + 1)
        // What the buffer holds: the votes counted so far.
        const state = () => ({
          pending: [new Map([[p("100"), new Map([...counted].map(([k, n]) => [o(k), n]))]])],
          batches: []
        })
        yield* Effect.scoped(
          Effect.gen(function* () {
            const journal = yield* Journal.makeFile(dir, files)
            faults.held = []
            const first = yield* Effect.fork(journal.append(p("100"), o("A"), count("A")))
            yield* Effect.yieldNow()
            // A is being written; B queues behind it, and the compaction waits for the write to end.
            const second = yield* Effect.fork(journal.append(p("100"), o("B"), count("B")))
            const compaction = yield* Effect.fork(journal.compact(state))
            yield* Effect.yieldNow()
            expect(counted.size).toBe(0)
            release()
            yield* Effect.all([first, second, compaction].map((f) => f.await))
          })
        )
        expect([...counted]).toEqual([
          ["A", 1],
          ["B", 1]
        ])
        // The snapshot holds A (durable and counted when it ran); B was written after it, into the new file.
        expect(textOf(dir)).toBe(`p ${JSON.stringify([["100", [["A", 1]]]])}\nv 100 B\n`)
        expect(flat(yield* reopen(dir))).toEqual({ "100/A": 1, "100/B": 1 })
      })
  )
})

/**
 * The `Journal` contract over both layers the stages compose: the file journal (`JOURNAL_DIR` set) and none. Each
 * layer is one journal shared by its tests, as it is shared by a buffer's partitions. What a journal keeps (`keeps`)
 * must come back from a reopen; a journal that keeps nothing must still take every record without failing.
 */
const journalDir = mkdtempSync(join(tmpdir(), "livepoll-journal-contract-"))
afterAll(() => rmSync(journalDir, { recursive: true, force: true }))

const journals: ReadonlyArray<{ readonly name: string; readonly layer: Layer.Layer<Journal.Journal>; keeps: boolean }> =
  [
    { name: "file", layer: Journal.layerFile(journalDir), keeps: true },
    { name: "none", layer: Journal.layerNone, keeps: false }
  ]

for (const { name, layer: journalLayer, keeps } of journals) {
  layer(journalLayer)(`Journal contract: ${name}`, (it) => {
    it.effect("a journal nobody wrote to recovers nothing", () =>
      Effect.gen(function* () {
        const recovered = yield* (yield* Journal.Journal).recover
        expect(recovered.pending.size).toBe(0)
        expect(recovered.batches).toEqual([])
      })
    )

    it.effect("append succeeds for every vote, and says when each is durable at most once", () =>
      Effect.gen(function* () {
        const journal = yield* Journal.Journal
        const durable: Array<string> = []
        yield* Effect.forEach(
          ["A", "B", "A"],
          (option, i) => journal.append(p(`c-${i}`), o(option), () => durable.push(`c-${i}`)),
          { concurrency: "unbounded", discard: true }
        )
        // A journal that has a durable moment names each vote once; one that has none leaves it to the caller.
        expect(durable.length === 0 || [...durable].sort().join() === "c-0,c-1,c-2").toBe(true)
        if (keeps) expect(durable).toHaveLength(3)
      })
    )

    it.effect("sealed, confirmed and compact take any record without failing", () =>
      Effect.gen(function* () {
        const journal = yield* Journal.Journal
        const sealed = batch("contract-1", [["c-0", "A", 1]])
        yield* journal.sealed("redis", sealed)
        yield* journal.confirmed(sealed.id)
        yield* journal.confirmed("never-sealed")
        yield* journal.compact(() => ({ pending: [new Map([[p("c-1"), new Map([[o("B"), 4]])]])], batches: [] }))
        const health = journal.health === undefined ? undefined : yield* journal.health
        if (health !== undefined) expect(health.ok).toBe(true)
      })
    )

    it.effect(
      keeps
        ? "what the journal holds after a compaction is what a reopened journal recovers"
        : "a journal that keeps nothing recovers nothing, whatever it was given",
      () =>
        Effect.gen(function* () {
          const journal = yield* Journal.Journal
          yield* journal.compact(() => ({
            pending: [new Map([[p("c-2"), new Map([[o("A"), 2]])]])],
            batches: [{ partition: "redis", batch: batch("contract-2", [["c-2", "B", 1]]) }]
          }))
          yield* journal.append(p("c-2"), o("A"), noop)
          const reopened = keeps ? yield* reopen(journalDir) : yield* journal.recover
          expect(flat(reopened)).toEqual(keeps ? { "c-2/A": 3 } : {})
          expect(reopened.batches.map((b) => b.batch.id)).toEqual(keeps ? ["contract-2"] : [])
        })
    )
  })
}
