import { it } from "@effect/vitest"
import { Effect } from "effect"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect } from "vitest"
import type { Batch, OptionId, PollId } from "../src/Domain.js"
import * as Journal from "../src/Journal.js"

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
      "v 100 A"
    ].join("\n")
    const r = Journal.replay(text)
    expect(flat(r)).toEqual({ "100/A": 1, "200/C": 1 })
    expect(r.batches.map((b) => b.batch.id)).toEqual(["i-2"])
    expect([...r.batches[0]!.batch.increments]).toEqual([...b2.increments])
  })

  it("ignores a torn last line", () => {
    expect(flat(Journal.replay('v 100 A\nv 100 A\nb redis i-9 [["100"'))).toEqual({ "100/A": 2 })
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
          yield* Effect.all([journal.append(p("100"), o("A")), journal.append(p("100"), o("A"))], {
            concurrency: "unbounded"
          })
          yield* journal.append(p("7"), o("Z"))
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
