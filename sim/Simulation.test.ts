import { Cause, Duration, Effect, Exit, Fiber } from "effect"
import { describe, expect, it } from "vitest"
import * as Broken from "./Broken.js"
import * as Simulation from "./Simulation.js"
import * as VirtualTime from "./VirtualTime.js"

/** Seeds of the short run inside `npm test`; `SIM_SEED` moves the window, `npm run sim` sweeps far wider. */
const base = Number(process.env.SIM_SEED || 1)
const seeds = Array.from({ length: 12 }, (_, i) => base + i)

describe("virtual time", () => {
  it("wakes sleepers in time order, first come first served within an instant, without real timers", () => {
    const order: Array<string> = []
    const sleeper = (name: string, ms: number) =>
      Effect.zipRight(
        Effect.sleep(Duration.millis(ms)),
        Effect.sync(() => void order.push(name))
      )
    const { exit, elapsedMs } = VirtualTime.run(
      Effect.all([sleeper("c", 30), sleeper("a", 10), sleeper("b", 10), sleeper("d", 3_600_000)], {
        concurrency: "unbounded"
      })
    )
    expect(Exit.isSuccess(exit)).toBe(true)
    expect(order).toEqual(["a", "b", "c", "d"])
    expect(elapsedMs).toBe(3_600_000)
  })

  it("ends a run that can never finish as a deadlock instead of hanging", () => {
    const { exit } = VirtualTime.run(Effect.flatMap(Effect.fork(Effect.never), Fiber.join))
    expect(Exit.isFailure(exit) && Cause.pretty(exit.cause)).toContain("deadlock")
  })
})

describe("simulation of the full stage", () => {
  it.each(seeds)("seed %i keeps every invariant", (seed) => {
    const outcome = Simulation.run(Simulation.generate(seed, { events: 100 }))
    if (outcome.violation !== undefined) {
      throw new Error(Simulation.formatFailure(outcome, Simulation.shrink(outcome, Simulation.real, { budget: 300 })))
    }
    // The run exercised what it claims to check.
    expect(outcome.stats.checks.placement).toBeGreaterThan(0)
    expect(outcome.stats.checks.lost + outcome.stats.checks.doubled).toBeGreaterThan(0)
    expect(outcome.stats.votesAccepted).toBeGreaterThan(0)
  })

  it("a seed replays the same run: same events, same trace, same outcome", () => {
    const first = Simulation.run(Simulation.generate(base + 3), Simulation.real, { trace: true })
    const second = Simulation.run(Simulation.generate(base + 3), Simulation.real, { trace: true })
    expect(second.scenario).toEqual(first.scenario)
    expect(second.trace).toEqual(first.trace)
    expect(second.stats).toEqual(first.stats)
    expect(first.trace.length).toBeGreaterThan(20)
  })

  it("shrinks a failure to a few events that still break the same invariant, and prints how to reproduce it", () => {
    const seed = seeds.find((s) => Simulation.run(Simulation.generate(s), Broken.notIdempotentOnRetry).violation)
    expect(seed, "no seed caught the broken variant").toBeDefined()
    const failing = Simulation.run(Simulation.generate(seed!), Broken.notIdempotentOnRetry)
    const shrunk = Simulation.shrink(failing, Broken.notIdempotentOnRetry, { budget: 300 })
    expect(shrunk.outcome.violation?.invariant).toBe(failing.violation!.invariant)
    expect(shrunk.scenario.events.length).toBeLessThan(failing.scenario.events.length / 4)
    // The shrunk scenario is itself a reproduction.
    expect(Simulation.run(shrunk.scenario, Broken.notIdempotentOnRetry).violation?.invariant).toBe(
      failing.violation!.invariant
    )
    const report = Simulation.formatFailure(failing, shrunk)
    expect(report).toContain(`seed=${seed}`)
    expect(report).toContain(`SIM_SEED=${seed} SIM_RUNS=1 SIM_EVENTS=${failing.scenario.events.length} npm run sim`)
    expect(report).toContain(Simulation.describeEvent(shrunk.scenario.events[0]!))
    expect(JSON.parse(report.split("\n").at(-1)!)).toEqual(JSON.parse(JSON.stringify(shrunk.scenario)))
  })
})
