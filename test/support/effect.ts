import { Duration, Effect, Either } from "effect"
import { sleep } from "./wait.js"

/** Real I/O as an Effect: the promise is made when the effect runs, and may not reject. */
export const promise = <A>(run: () => Promise<A>) => Effect.promise(run)

/** The error of an effect that must fail, and must do so within the contract's 2 s. */
export const failsInTime = <A, E>(effect: Effect.Effect<A, E>) =>
  effect.pipe(
    Effect.timeoutFail({ duration: Duration.seconds(2), onTimeout: () => "no answer within 2 s" as const }),
    Effect.flip
  )

/** Runs an effect until it succeeds, with a pause between attempts (real time); gives up after `attempts`. */
export const untilSucceeds = <A, E>(effect: Effect.Effect<A, E>, attempts = 100, pauseMs = 100) =>
  Effect.gen(function* () {
    for (let i = 1; ; i++) {
      const result = yield* Effect.either(effect)
      if (Either.isRight(result) || i === attempts) return yield* result
      yield* promise(() => sleep(pauseMs))
    }
  })
