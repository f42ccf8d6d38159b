import * as fs from "node:fs"
import { describe, expect, it } from "vitest"
import * as Ring from "../src/Ring.js"
import * as Properties from "./properties.js"
import * as RingStats from "./RingStats.js"
import { type Golden, GOLDEN_FILE, goldenPollIds } from "./writeGolden.js"

describe("ring balance", () => {
  it("at the default virtual-node count the busiest of 2..16 nodes owns at most 1.05 / n of the hash space", () => {
    const rows = RingStats.range(2, 16).map((n) => ({
      n,
      maxOverMean: RingStats.maxOverMean(Ring.make(RingStats.defaultNames(n)))
    }))
    const worst = rows.reduce((a, b) => (b.maxOverMean > a.maxOverMean ? b : a))
    expect(
      worst.maxOverMean,
      `${worst.n} nodes at ${Ring.DEFAULT_VIRTUAL_NODES} virtual nodes: busiest = ${worst.maxOverMean.toFixed(4)} x mean`
    ).toBeLessThanOrEqual(1.05)
  })

  it("ownership covers the hash space exactly once", () => {
    for (const n of [1, 2, 7, 16]) {
      const shares = [...Ring.ownership(Ring.make(RingStats.defaultNames(n))).values()]
      expect(shares.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12)
      for (const share of shares) expect(share).toBeGreaterThan(0)
    }
  })

  it("100,000 random poll ids land on each node in proportion to its exact share, within sampling error", () => {
    const count = 100_000
    for (const n of [2, 3, 5, 8, 16]) {
      const ring = Ring.make(RingStats.defaultNames(n))
      const shares = Ring.ownership(ring)
      const observed = RingStats.sample(ring, count, 1000 + n)
      for (const [node, share] of shares) {
        const expected = count * share
        // Five standard deviations of a binomial count: a false alarm about once in a million nodes checked.
        const tolerance = 5 * Math.sqrt(count * share * (1 - share))
        expect(
          Math.abs(observed.get(node)! - expected),
          `${node} of ${n}: ${observed.get(node)} ids, expected ${expected.toFixed(0)}`
        ).toBeLessThanOrEqual(tolerance)
      }
    }
  })
})

describe("key stability", () => {
  it("adding a node moves at most 1/(n+1) + 0.03 of the keys, all of them onto the new node", () => {
    Properties.checkAddMovesOnlyToNewcomer(Properties.propertyParameters({ numRuns: 8 }))
  })

  it("removing a node moves only the keys it owned", () => {
    Properties.checkRemoveMovesOnlyItsKeys(Properties.propertyParameters({ numRuns: 8 }))
  })

  it("the mapping does not depend on the order of REDIS_NODES", () => {
    Properties.checkOrderIndependence(Properties.propertyParameters({ numRuns: 8 }))
  })

  it("agrees with the golden file of poll id -> node for redis_7000..redis_7002", () => {
    const golden = JSON.parse(fs.readFileSync(GOLDEN_FILE, "utf8")) as Golden
    for (const [text, seed, hash] of golden.murmur3)
      expect(Ring.murmur3(text, seed), `murmur3(${JSON.stringify(text)}, ${seed})`).toBe(hash)
    expect(Object.keys(golden.polls)).toEqual(goldenPollIds())
    for (const nodes of [golden.nodes, [...golden.nodes].reverse()]) {
      const ring = Ring.make(nodes, golden.virtualNodes)
      const moved = Object.entries(golden.polls).filter(([id, node]) => Ring.nodeFor(ring, id) !== node)
      expect(
        moved.map(([id]) => id),
        "polls the ring now puts on another node"
      ).toEqual([])
    }
    // A change of the default count moves polls just as a change of the hash does.
    expect(Ring.DEFAULT_VIRTUAL_NODES, "DEFAULT_VIRTUAL_NODES differs from the golden file").toBe(golden.virtualNodes)
  })
})
