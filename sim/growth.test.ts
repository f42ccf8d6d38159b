import * as fc from "fast-check"
import { describe, expect, it } from "vitest"
import * as Growth from "./Growth.js"

/**
 * Growing the ring while votes arrive (sim/Growth.ts): over any interleaving of votes, one-vote-per-voter votes,
 * flushes (each half its own event, answers lost), reads (started and finished apart), per-poll move steps, crashed
 * and resumed moves and instance restarts, no vote is lost or doubled, no voter counts twice, and every read lies
 * between what was applied when it began and when it ended. Each piece of the protocol switched off breaks it.
 */

const instance = fc.integer({ min: 0, max: 2 })
const poll = fc.constantFrom(...Growth.POLLS)
const movingPoll = fc.constantFrom(...Growth.POLLS.filter(Growth.moves))

const event: fc.Arbitrary<Growth.Event> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant("vote" as const),
      instance,
      poll,
      option: fc.constantFrom(0 as const, 1 as const)
    })
  },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant("voteOnce" as const),
      instance,
      poll,
      voter: fc.constantFrom(0 as const, 1 as const, 2 as const)
    })
  },
  { weight: 5, arbitrary: fc.record({ kind: fc.constant("flush" as const), instance, lose: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("read" as const), instance, poll }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("readStart" as const), instance, poll }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("readEnd" as const), instance }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant("restart" as const), instance }) },
  { weight: 2, arbitrary: fc.constant({ kind: "startReshard" as const }) },
  { weight: 7, arbitrary: fc.record({ kind: fc.constant("moveStep" as const), poll: movingPoll }) },
  { weight: 1, arbitrary: fc.constant({ kind: "crashReshard" as const }) }
)
const scenario = fc.array(event, { minLength: 10, maxLength: 80 })

const RUNS = Number(process.env["GROWTH_RUNS"] ?? 400)

describe("online growth", () => {
  it("loses no vote, doubles none, counts no voter twice, and every read is exact", () => {
    fc.assert(
      fc.property(scenario, (events) => {
        const violation = Growth.run(events)
        if (violation !== undefined) throw new Error(`${violation.invariant}: ${violation.message}`)
      }),
      { numRuns: RUNS }
    )
  })

  const flaws: ReadonlyArray<[Growth.Flaw, ReadonlyArray<Growth.Violation["invariant"]>]> = [
    ["merge-without-marker", ["lost-or-doubled", "read-out-of-bounds"]],
    ["no-tombstone-check", ["lost-or-doubled", "read-out-of-bounds", "left-behind"]],
    ["no-incoming-check", ["voter-twice"]],
    ["marker-forgets-moved", ["lost-or-doubled", "read-out-of-bounds"]],
    ["redirect-without-poll-marker", ["lost-or-doubled", "read-out-of-bounds"]],
    ["read-ignores-merged", ["read-out-of-bounds"]],
    ["migrating-cleared-when-done", ["lost-or-doubled", "read-out-of-bounds", "voter-twice"]]
  ]
  it.each(flaws)("catches the protocol without its piece: %s", (flaw, invariants) => {
    const result = fc.check(
      fc.property(scenario, (events) => Growth.run(events, flaw) === undefined),
      { numRuns: 5000, seed: 17 }
    )
    expect(result.failed, `${flaw} passed ${result.numRuns} runs`).toBe(true)
    const [events] = result.counterexample!
    const violation = Growth.run(events, flaw)!
    expect(invariants, violation.message).toContain(violation.invariant)
    // Control: the whole protocol passes the very run that caught the flaw.
    expect(Growth.run(events)).toBeUndefined()
  })
})
