import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Either, Exit, Option, Runtime } from "effect"
import fc from "fast-check"
import { runFast } from "../../src/Http/Run.js"

/**
 * `runFast` must be indistinguishable from running the same Effect in a fiber: the same exit, and every side effect
 * made once, in the same order. Programs are generated from the steps it walks itself and from steps it must hand
 * to a fiber (async, yielding, reading the runtime), mixed at any depth.
 */

type Program = (trace: Array<string>) => Effect.Effect<number, string>

const leaf: fc.Arbitrary<Program> = fc.oneof(
  fc.integer({ min: 0, max: 99 }).map(
    (n): Program =>
      () =>
        Effect.succeed(n)
  ),
  fc.string({ maxLength: 3 }).map(
    (e): Program =>
      () =>
        Effect.fail(`e${e}`)
  ),
  fc.integer({ min: 0, max: 99 }).map(
    (n): Program =>
      (trace) =>
        Effect.sync(() => {
          trace.push(`sync ${n}`)
          return n
        })
  ),
  fc.constant<Program>((trace) =>
    Effect.sync(() => {
      trace.push("throw")
      throw new Error("a defect")
    })
  ),
  fc.integer({ min: 0, max: 99 }).map(
    (n): Program =>
      () =>
        Either.right(n)
  ),
  fc.constant<Program>(() => Either.left("left")),
  fc.integer({ min: 0, max: 99 }).map(
    (n): Program =>
      () =>
        Option.some(n) as unknown as Effect.Effect<number, never>
  ),
  // Steps only a fiber can take.
  fc.integer({ min: 0, max: 99 }).map(
    (n): Program =>
      (trace) =>
        Effect.async<number>((resume) => {
          trace.push(`async ${n}`)
          setImmediate(() => resume(Effect.succeed(n)))
        })
  ),
  fc.constant<Program>(() => Effect.as(Effect.yieldNow(), 7)),
  fc.constant<Program>(() => Effect.map(Effect.fiberId, () => 8))
)

const program: fc.Arbitrary<Program> = fc.letrec<{ program: Program }>((tie) => ({
  program: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    leaf,
    fc.tuple(tie("program"), tie("program")).map(
      ([a, b]): Program =>
        (trace) =>
          Effect.flatMap(a(trace), (n) => {
            trace.push(`then ${n}`)
            return b(trace)
          })
    ),
    fc.tuple(tie("program"), fc.integer({ min: 0, max: 9 })).map(
      ([a, k]): Program =>
        (trace) =>
          Effect.map(a(trace), (n) => n * 10 + k)
    ),
    fc.tuple(tie("program"), tie("program")).map(
      ([a, b]): Program =>
        (trace) =>
          Effect.catchAllCause(a(trace), (cause) => {
            trace.push(`caught ${Cause.isDie(cause) ? "defect" : Cause.squash(cause)}`)
            return b(trace)
          })
    ),
    fc.tuple(tie("program"), tie("program"), tie("program")).map(
      ([a, onFailure, onSuccess]): Program =>
        (trace) =>
          Effect.matchCauseEffect(a(trace), {
            onFailure: () => onFailure(trace),
            onSuccess: (n) => Effect.map(onSuccess(trace), (m) => n + m)
          })
    ),
    fc.tuple(tie("program"), tie("program")).map(
      ([a, b]): Program =>
        (trace) =>
          Effect.match(Effect.zipRight(a(trace), b(trace)), {
            onFailure: (e) => -e.length,
            onSuccess: (n) => n
          })
    ),
    tie("program").map(
      (a): Program =>
        (trace) =>
          Effect.suspend(() => {
            trace.push("suspend")
            return a(trace)
          })
    ),
    tie("program").map(
      (a): Program =>
        (trace) =>
          Effect.flatMap(a(trace), () => {
            trace.push("continuation throws")
            throw new Error("a defect in a continuation")
          })
    )
  )
})).program

const runtime = Runtime.defaultRuntime
const viaRunFast = (effect: Effect.Effect<number, string>) =>
  new Promise<Exit.Exit<number, string>>((resolve) => runFast(effect, Runtime.runFork(runtime), resolve))

/** Exits compared by what they say: the value, or the failures and defect messages of the cause. */
const describeExit = (exit: Exit.Exit<number, string>) =>
  Exit.isSuccess(exit)
    ? { value: exit.value }
    : {
        failures: [...Cause.failures(exit.cause)],
        defects: [...Cause.defects(exit.cause)].map((d) => (d instanceof Error ? d.message : String(d)))
      }

describe("runFast", () => {
  it("gives the exit and the side effects a fiber gives, on any program", async () => {
    await fc.assert(
      fc.asyncProperty(program, async (p) => {
        const inFiber: Array<string> = []
        const expected = await Runtime.runPromiseExit(runtime)(p(inFiber))
        const fast: Array<string> = []
        const actual = await viaRunFast(p(fast))
        expect(describeExit(actual)).toEqual(describeExit(expected))
        expect(fast).toEqual(inFiber)
      }),
      { numRuns: 500 }
    )
  })

  it("finishes a synchronous program before it returns, without a fiber", () => {
    let forks = 0
    let exit: Exit.Exit<number, string> | undefined
    const fork = (rest: Effect.Effect<number, string>) => {
      forks++
      return Runtime.runFork(runtime)(rest)
    }
    const effect = Effect.flatMap(
      Effect.sync(() => 20),
      (n) =>
        Effect.match(
          Effect.suspend(() => (n > 10 ? Effect.fail("big") : Effect.succeed(n))),
          {
            onFailure: (e) => e.length,
            onSuccess: (m) => m
          }
        )
    )
    runFast(effect, fork, (e) => (exit = e))
    expect(exit).toEqual(Exit.succeed(3))
    expect(forks).toBe(0)
  })

  it("hands the rest to a fiber at the first step it cannot take, and runs the steps before it once", async () => {
    const trace: Array<string> = []
    let forks = 0
    const fork = (rest: Effect.Effect<number, string>) => {
      forks++
      return Runtime.runFork(runtime)(rest)
    }
    const effect = Effect.sync(() => trace.push("before")).pipe(
      Effect.zipRight(Effect.sleep("1 millis")),
      Effect.flatMap(() => Effect.sync(() => trace.push("after"))),
      Effect.map(() => 42)
    )
    const exit = await new Promise<Exit.Exit<number, string>>((resolve) => {
      runFast(effect, fork, resolve)
      expect(trace).toEqual(["before"])
    })
    expect(exit).toEqual(Exit.succeed(42))
    expect(trace).toEqual(["before", "after"])
    expect(forks).toBe(1)
  })

  it("waits for an async step without a canceller in its callback, without a fiber", async () => {
    let forks = 0
    const fork = (rest: Effect.Effect<number, string>) => {
      forks++
      return Runtime.runFork(runtime)(rest)
    }
    const answer = Effect.async<number, string>((resume) => void setImmediate(() => resume(Effect.succeed(41))))
    const exit = await new Promise<Exit.Exit<number, string>>((resolve) =>
      runFast(
        Effect.map(answer, (n) => n + 1),
        fork,
        resolve
      )
    )
    expect(exit).toEqual(Exit.succeed(42))
    expect(forks).toBe(0)
  })

  it("hands a long synchronous loop to a fiber part-way, as a fiber would yield", async () => {
    let forks = 0
    const fork = (rest: Effect.Effect<number>) => {
      forks++
      return Runtime.runFork(runtime)(rest)
    }
    const count = (n: number): Effect.Effect<number> =>
      n === 0 ? Effect.succeed(0) : Effect.flatMap(Effect.succeed(n), (m) => Effect.map(count(m - 1), (r) => r + 1))
    const exit = await new Promise<Exit.Exit<number>>((resolve) => runFast(count(5000), fork, resolve))
    expect(exit).toEqual(Exit.succeed(5000))
    expect(forks).toBe(1)
  })
})
