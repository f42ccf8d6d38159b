import { describe, expect, it } from "vitest"
import * as Broken from "./Broken.js"
import type { Invariant, Variant } from "./Simulation.js"
import * as Simulation from "./Simulation.js"

/**
 * The simulation must fail on broken builds: each variant below changes one piece of the real cluster and must be
 * caught, on the same seeds the real layers pass, by the invariant that describes its mistake.
 */

const SEEDS = Array.from({ length: 30 }, (_, i) => i + 1)

const firstCatch = (variant: Variant) => {
  for (const seed of SEEDS) {
    const outcome = Simulation.run(Simulation.generate(seed, { events: 100 }), variant)
    if (outcome.violation !== undefined) return outcome
  }
  return undefined
}

const cases: Array<[Variant, ReadonlyArray<Invariant>]> = [
  [Broken.orderDependentRing, ["placement"]],
  [Broken.clearsBeforeConfirm, ["lost", "read-too-low"]],
  [Broken.notIdempotentOnRetry, ["doubled", "read-too-high"]],
  [Broken.cacheNotInvalidated, ["read-too-low", "monotonic"]],
  [Broken.cacheOverstaysTtl, ["read-too-low"]]
]

describe("the simulation catches", () => {
  it.each(cases.map(([variant, expected]) => [variant.name, variant, expected] as const))(
    "%s",
    (_, variant, expected) => {
      const caught = firstCatch(variant)
      expect(caught, `${variant.name} passed ${SEEDS.length} seeds`).toBeDefined()
      expect(expected, caught!.violation!.message).toContain(caught!.violation!.invariant)
      // Control: the real layers pass the very run that caught the broken one.
      const control = Simulation.run(caught!.scenario, Simulation.real)
      expect(control.violation, control.violation?.message).toBeUndefined()
    }
  )

  it("an order-dependent ring splits a poll across shards when instances list REDIS_NODES differently", () => {
    const scenario: Simulation.Scenario = {
      config: {
        ...Simulation.generate(1).config,
        shards: ["redis_7000", "redis_7001", "redis_7002"],
        instances: 2,
        nodeOrders: [
          ["redis_7000", "redis_7001", "redis_7002"],
          ["redis_7002", "redis_7000", "redis_7001"]
        ],
        polls: Array.from({ length: 10 }, (_, i) => `p${i}`),
        latency: { min: 0, max: 0 },
        errorRate: 0,
        timeoutAfterApplyRate: 0
      },
      events: [
        ...Array.from({ length: 10 }, (_, i) => ({ _tag: "Vote" as const, instance: 0, poll: `p${i}`, option: "A" })),
        ...Array.from({ length: 10 }, (_, i) => ({ _tag: "Vote" as const, instance: 1, poll: `p${i}`, option: "A" })),
        { _tag: "Wait", ms: 1000 }
      ]
    }
    const outcome = Simulation.run(scenario, Broken.orderDependentRing)
    expect(outcome.violation?.invariant).toBe("placement")
    const split = outcome.violations.filter((v) => /is stored on \[redis_\d+, redis_\d+\]/.test(v.message))
    expect(split.length, outcome.violations.map((v) => v.message).join("\n")).toBeGreaterThan(0)
    expect(Simulation.run(scenario, Simulation.real).violation).toBeUndefined()
  })
})
