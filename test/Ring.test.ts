import * as fc from "fast-check"
import { describe, expect, it } from "vitest"
import * as Ring from "../src/Ring.js"

/**
 * The ring's functions one by one: the hash, the placement of points, ownership. How evenly the ring spreads polls
 * and how few move when a node comes or goes are properties over many rings, in sim/Ring.test.ts.
 */
const keys = Array.from({ length: 10_000 }, (_, i) => `poll-${i}`)
const namesOf = (n: number, prefix = "redis_") => Array.from({ length: n }, (_, i) => `${prefix}${7000 + i}`)
const assignment = (ring: Ring.Ring) => keys.map((key) => Ring.nodeFor(ring, key))

describe("murmur3", () => {
  // MurmurHash3_x86_32 reference values (Appleby's smhasher implementation; the seeded ones are the widely
  // published test vectors), over the UTF-8 bytes of each string.
  const vectors: ReadonlyArray<readonly [string, number, number]> = [
    ["", 0, 0x00000000],
    ["", 1, 0x514e28b7],
    ["", 0xffffffff, 0x81f16f39],
    ["hello", 0, 0x248bfa47],
    ["The quick brown fox jumps over the lazy dog", 0, 0x2e4ff723],
    ["The quick brown fox jumps over the lazy dog", 0x9747b28c, 0x2fa826cd],
    ["a", 0x9747b28c, 0x7fa09ea6],
    ["ab", 0x9747b28c, 0x74875592],
    ["abc", 0x9747b28c, 0xc84a62dd],
    ["abcd", 0x9747b28c, 0xf0478627],
    ["abc", 0, 0xb3dd93fa],
    ["Hello, world!", 0x9747b28c, 0x24884cba],
    ["ππππππππ", 0x9747b28c, 0xd58063c1],
    ["\u0000\u0000\u0000\u0000", 0, 0x2362f9de],
    ["a".repeat(256), 0x9747b28c, 0x37405bdc]
  ]
  it.each(vectors)("murmur3(%j, seed %d) is the reference value", (text, seed, expected) => {
    expect(Ring.murmur3(text, seed)).toBe(expected)
  })

  it("defaults to seed 0 and always returns an unsigned 32-bit integer", () => {
    expect(Ring.murmur3("hello")).toBe(Ring.murmur3("hello", 0))
    fc.assert(
      fc.property(fc.string({ unit: "grapheme" }), fc.integer({ min: 0, max: 0xffffffff }), (text, seed) => {
        const h = Ring.murmur3(text, seed)
        return Number.isInteger(h) && h >= 0 && h <= 0xffffffff
      })
    )
  })
})

describe("ring", () => {
  it("maps a key to the same node every time, and two rings over the same names agree", () => {
    const ring = Ring.make(namesOf(3))
    const first = assignment(ring)
    expect(assignment(ring)).toEqual(first)
    expect(assignment(Ring.make(namesOf(3)))).toEqual(first)
    expect(new Set(first)).toEqual(new Set(namesOf(3)))
  })

  it("does not depend on the order (or repetition) of the names", () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.stringMatching(/^[a-z0-9_]{1,12}$/), { minLength: 1, maxLength: 6 }),
        fc.integer(),
        (names, seed) => {
          const shuffled = fc.sample(fc.shuffledSubarray(names, { minLength: names.length }), { seed, numRuns: 1 })[0]!
          const a = Ring.make(names, 32)
          const b = Ring.make([...shuffled, ...shuffled], 32)
          expect(b.points).toEqual(a.points)
          expect(b.owners).toEqual(a.owners)
          for (const key of keys.slice(0, 200)) expect(Ring.nodeFor(b, key)).toBe(Ring.nodeFor(a, key))
        }
      ),
      { numRuns: 50 }
    )
  })

  it("places each virtual node at murmur3 of `<name>#<i>` and gives a key to the first point clockwise", () => {
    const names = ["b", "a"]
    const points = names
      .flatMap((name) => [0, 1, 2, 3].map((i) => ({ hash: Ring.murmur3(`${name}#${i}`), name })))
      .sort((x, y) => x.hash - y.hash || x.name.localeCompare(y.name))
    const ring = Ring.make(names, 4)
    expect([...ring.points]).toEqual(points.map((p) => p.hash))
    let wrapped = 0
    for (const key of keys.slice(0, 2000)) {
      const hash = Ring.murmur3(key)
      const next = points.find((p) => p.hash >= hash)
      if (next === undefined) wrapped++
      expect(Ring.nodeFor(ring, key)).toBe((next ?? points[0]!).name)
    }
    expect(wrapped).toBeGreaterThan(0)
  })

  it("gives one node the whole hash space", () => {
    const ring = Ring.make(["only"])
    expect(Ring.ownership(ring)).toEqual(new Map([["only", 1]]))
    expect(new Set(assignment(ring))).toEqual(new Set(["only"]))
  })

  it("rejects an empty ring and a non-positive virtual node count", () => {
    expect(() => Ring.make([])).toThrow()
    expect(() => Ring.make(["a"], 0)).toThrow()
    expect(() => Ring.make(["a"], 1.5)).toThrow()
  })

  it("ownership sums to 1", () => {
    for (const n of [1, 2, 3, 5, 8]) {
      for (const virtualNodes of [1, 7, Ring.DEFAULT_VIRTUAL_NODES]) {
        const total = [...Ring.ownership(Ring.make(namesOf(n), virtualNodes)).values()].reduce((a, b) => a + b, 0)
        expect(total).toBeCloseTo(1, 12)
      }
    }
  })

  it("ownership matches the share of keys each node is given", () => {
    const ring = Ring.make(namesOf(4), 8)
    const share = new Map<string, number>()
    for (const node of assignment(ring)) share.set(node, (share.get(node) ?? 0) + 1 / keys.length)
    for (const [node, owned] of Ring.ownership(ring))
      expect(Math.abs((share.get(node) ?? 0) - owned)).toBeLessThan(0.02)
  })
})
