import * as fc from "fast-check"
import { Either, Schema } from "effect"
import { describe, expect, it } from "vitest"
import { isOptionId, isPollId, isVoterId, OptionId, PollId, VoteRequest, voteRequestOf, VoterId } from "../src/Domain.js"

// Strings near the edges: the allowed characters and a few that are not, at lengths around each limit.
const nearId = (chars: string) =>
  fc.string({
    unit: fc.oneof(
      { weight: 8, arbitrary: fc.constantFrom(...chars) },
      { weight: 1, arbitrary: fc.constantFrom(" ", "/", "%", "é", "\n", "ß", ":", "😀") }
    ),
    minLength: 0,
    maxLength: 140
  })
const ID_CHARS = "abcXYZ019_.-"
const VOTER_CHARS = `${ID_CHARS}:`
const anyValue = fc.oneof(fc.string(), nearId(VOTER_CHARS), fc.anything())

describe("the parser-free id checks give the schemas' verdict", () => {
  const cases = [
    ["PollId", isPollId, Schema.is(PollId)],
    ["OptionId", isOptionId, Schema.is(OptionId)],
    ["VoterId", isVoterId, Schema.is(VoterId)]
  ] as const
  it.each(cases)("%s", (_, fast, schema) => {
    fc.assert(fc.property(anyValue, (u) => fast(u) === schema(u)), { numRuns: 3000 })
  })

  it("at the length limits", () => {
    for (const [n, ok] of [[0, false], [1, true], [64, true], [65, false]] as const) {
      expect(isPollId("a".repeat(n))).toBe(ok)
      expect(Schema.is(PollId)("a".repeat(n))).toBe(ok)
    }
    for (const [n, ok] of [[128, true], [129, false]] as const) expect(isVoterId("v".repeat(n))).toBe(ok)
    expect(isPollId("a:b")).toBe(false)
    expect(isVoterId("a:b")).toBe(true)
  })
})

describe("voteRequestOf", () => {
  const decode = Schema.decodeUnknownEither(VoteRequest, { onExcessProperty: "ignore" })
  const body = fc.record(
    {
      option_id: fc.oneof(nearId(ID_CHARS), fc.anything()),
      voter_id: fc.oneof(nearId(VOTER_CHARS), fc.anything()),
      extra: fc.anything()
    },
    { requiredKeys: [] }
  )

  it("accepts exactly what the schema accepts, with the same value", () => {
    fc.assert(
      fc.property(fc.oneof(body, fc.anything()), (u) => {
        const fast = voteRequestOf(u)
        const slow = decode(u)
        if (fast === undefined) return Either.isLeft(slow)
        return Either.isRight(slow) && JSON.stringify(fast) === JSON.stringify(slow.right)
      }),
      { numRuns: 5000 }
    )
  })

  it("drops other properties and keeps an absent voter absent", () => {
    expect(voteRequestOf({ option_id: "A", extra: 1 })).toStrictEqual({ option_id: "A" })
    expect(voteRequestOf({ option_id: "A", voter_id: "v:1" })).toStrictEqual({ option_id: "A", voter_id: "v:1" })
    expect(voteRequestOf({ option_id: "A", voter_id: "" })).toBeUndefined()
    expect(voteRequestOf(["A"])).toBeUndefined()
    expect(voteRequestOf(null)).toBeUndefined()
  })
})
