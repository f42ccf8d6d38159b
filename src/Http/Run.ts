import { Cause, Effect, Exit } from "effect"

/**
 * Runs a request's Effect without a fiber for as long as every step it takes is synchronous, and hands what is left
 * to a fiber at the first step that is not.
 *
 * A vote on a hot poll in the buffered stages, a cached read and every refusal finish without waiting for anything:
 * for them a fiber (its creation, its run loop, its observers) costs more than all of the request's own steps (see
 * the README's "Performance"). So this walks the steps itself: values, failures, `sync` and `suspend` thunks, the
 * continuations of `flatMap`, `catchAllCause` and `matchCauseEffect` (on which `map`, `zipRight`, `match`, ... are
 * built), and `async` steps without a canceller (a Redis call: the walk resumes in its callback). Any other step (reading a service or the clock, a fiber ref, a span, an interruption handler, yielding) is
 * left to a real fiber on the app's runtime, together with the continuations still to run, so it behaves exactly as
 * it would have: the steps taken here are only those whose meaning needs no fiber. A throw from a thunk or a
 * continuation is a defect, as it is in a fiber.
 *
 * The steps are read from the shape of Effect 3's primitives (`_op` and `effect_instruction_i*`, internal to the
 * `effect` package): test/Http/Run.test.ts holds this runner to `Effect.runPromiseExit` on generated programs, so an
 * upgrade that changes the shape fails there, not in production.
 */

interface Primitive {
  readonly _op: string
  readonly effect_instruction_i0: unknown
  readonly effect_instruction_i1: unknown
  readonly effect_instruction_i2: unknown
  readonly commit: () => unknown
  readonly left: unknown
  readonly right: unknown
  readonly value: unknown
}

type Continuation = (a: unknown) => unknown

/** Steps taken here at most before the rest goes to a fiber, so a long synchronous loop still yields like a fiber does. */
const MAX_STEPS = 1024

/**
 * Runs `effect`, then `done` with its exit: synchronously when every step is, otherwise from the fiber `fork` starts
 * for the rest.
 */
export const runFast = <A, E>(
  effect: Effect.Effect<A, E>,
  fork: (rest: Effect.Effect<A, E>) => { readonly addObserver: (observer: (exit: Exit.Exit<A, E>) => void) => void },
  done: (exit: Exit.Exit<A, E>) => void
): void => walk(effect as unknown as Primitive, [], fork as Fork, done as (exit: Exit.Exit<unknown, unknown>) => void)

type Fork = (rest: Effect.Effect<unknown, unknown>) => {
  readonly addObserver: (observer: (exit: Exit.Exit<unknown, unknown>) => void) => void
}

const walk = (
  start: Primitive,
  stack: Array<Primitive>,
  fork: Fork,
  done: (exit: Exit.Exit<unknown, unknown>) => void
): void => {
  let current = start
  for (let steps = 0; steps < MAX_STEPS; steps++) {
    let value: unknown
    let cause: Cause.Cause<unknown> | undefined
    switch (current._op) {
      case "Success":
        value = current.effect_instruction_i0
        break
      case "Right":
        value = current.right
        break
      case "Some":
        value = current.value
        break
      case "Failure":
        cause = current.effect_instruction_i0 as Cause.Cause<unknown>
        break
      case "Left":
        cause = Cause.fail(current.left)
        break
      case "Sync":
        try {
          value = (current.effect_instruction_i0 as () => unknown)()
        } catch (defect) {
          cause = Cause.die(defect)
        }
        break
      case "Commit":
        try {
          current = current.commit() as Primitive
          continue
        } catch (defect) {
          cause = Cause.die(defect)
        }
        break
      case "OnSuccess":
      case "OnFailure":
      case "OnSuccessAndFailure":
        stack.push(current)
        current = current.effect_instruction_i0 as Primitive
        continue
      case "Async": {
        // Waiting on a callback (a Redis answer): the walk goes on from what it resumes with, once. With no fiber
        // there is nothing to interrupt, so the step has no canceller here (one that has is wrapped in an
        // interruption handler, a step left to a fiber).
        let resumed = false
        const resume = (effect: unknown) => {
          if (resumed) return
          resumed = true
          walk(effect as Primitive, stack, fork, done)
        }
        try {
          ;(current.effect_instruction_i0 as (resume: (effect: unknown) => void) => void)(resume)
        } catch (defect) {
          resume(Exit.die(defect))
        }
        return
      }
      default:
        return fork(rebuild(current, stack)).addObserver(done)
    }
    // A value goes to the nearest continuation that takes one, a failure to the nearest that handles it.
    let next: Continuation | undefined
    while (next === undefined) {
      const frame = stack.pop()
      if (frame === undefined) return done(cause === undefined ? Exit.succeed(value) : Exit.failCause(cause))
      if (cause === undefined) {
        if (frame._op === "OnSuccess") next = frame.effect_instruction_i1 as Continuation
        else if (frame._op === "OnSuccessAndFailure") next = frame.effect_instruction_i2 as Continuation
      } else if (frame._op !== "OnSuccess") next = frame.effect_instruction_i1 as Continuation
    }
    try {
      current = next(cause ?? value) as Primitive
    } catch (defect) {
      current = Exit.die(defect) as unknown as Primitive
    }
  }
  fork(rebuild(current, stack)).addObserver(done)
}

/** The step reached and the continuations still waiting on it, as one Effect again. */
const rebuild = (current: Primitive, stack: ReadonlyArray<Primitive>): Effect.Effect<unknown, unknown> => {
  let rest = current as unknown as Effect.Effect<unknown, unknown>
  for (let i = stack.length - 1; i >= 0; i--) {
    const frame = stack[i]!
    const onSuccess = frame.effect_instruction_i1 as (a: unknown) => Effect.Effect<unknown, unknown>
    rest =
      frame._op === "OnSuccess"
        ? Effect.flatMap(rest, onSuccess)
        : frame._op === "OnFailure"
          ? Effect.catchAllCause(
              rest,
              frame.effect_instruction_i1 as (c: Cause.Cause<unknown>) => Effect.Effect<unknown>
            )
          : Effect.matchCauseEffect(rest, {
              onFailure: frame.effect_instruction_i1 as (c: Cause.Cause<unknown>) => Effect.Effect<unknown, unknown>,
              onSuccess: frame.effect_instruction_i2 as (a: unknown) => Effect.Effect<unknown, unknown>
            })
  }
  return rest
}
