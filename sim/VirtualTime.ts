import { Cause, Clock, Duration, Effect, Exit, Scheduler } from "effect"

/**
 * Virtual time for whole-cluster simulations.
 *
 * Same idea as Effect's TestClock (time moves only when told, sleeps wake in order), but the runner owns the fiber
 * scheduler too: every fiber runs on a ControlledScheduler that is drained until nothing can move, and only then does
 * the clock jump to the earliest sleep. TestClock instead waits on real timers between wake-ups to let fibers settle,
 * a few milliseconds each; a simulation wakes thousands of sleeps per run. Here no real timer is involved, so a run is
 * a pure function of its input and takes microseconds per wake-up.
 *
 * The program must not wait on anything outside the runtime (promises, I/O): with no task and no sleep left while
 * the program is unfinished, the run ends as a deadlock.
 */
export class VirtualClock implements Clock.Clock {
  readonly [Clock.ClockTypeId]: Clock.ClockTypeId = Clock.ClockTypeId
  private now = 0
  private readonly timers: Array<{ readonly at: number; readonly wake: () => void }> = []

  unsafeCurrentTimeMillis(): number {
    return this.now
  }
  unsafeCurrentTimeNanos(): bigint {
    return BigInt(this.now) * 1_000_000n
  }
  get currentTimeMillis(): Effect.Effect<number> {
    return Effect.sync(() => this.now)
  }
  get currentTimeNanos(): Effect.Effect<bigint> {
    return Effect.sync(() => this.unsafeCurrentTimeNanos())
  }
  sleep(duration: Duration.DurationInput): Effect.Effect<void> {
    const ms = Math.max(0, Duration.toMillis(Duration.decode(duration)))
    return Effect.async<void>((resume) => {
      const timer = { at: this.now + ms, wake: () => resume(Effect.void) }
      // Kept sorted by wake time; sleeps due at the same instant wake in the order they were taken.
      let lo = 0
      let hi = this.timers.length
      while (lo < hi) {
        const mid = (lo + hi) >>> 1
        if (this.timers[mid]!.at <= timer.at) lo = mid + 1
        else hi = mid
      }
      this.timers.splice(lo, 0, timer)
      return Effect.sync(() => {
        const at = this.timers.indexOf(timer)
        if (at >= 0) this.timers.splice(at, 1)
      })
    })
  }
  /** Wakes the earliest sleeper, moving time forward to it; false when nobody sleeps. */
  advance(): boolean {
    const timer = this.timers.shift()
    if (timer === undefined) return false
    this.now = Math.max(this.now, timer.at)
    timer.wake()
    return true
  }
  get pendingSleeps(): number {
    return this.timers.length
  }
}

export interface VirtualRun<A, E> {
  readonly exit: Exit.Exit<A, E>
  /** Virtual milliseconds from start to end. */
  readonly elapsedMs: number
  readonly wakeups: number
}

export interface VirtualOptions {
  /** Give up (and fail the run) once virtual time passes this. */
  readonly maxVirtualMs?: number
}

export const run = <A, E>(effect: Effect.Effect<A, E>, options: VirtualOptions = {}): VirtualRun<A, E> => {
  const clock = new VirtualClock()
  const scheduler = new Scheduler.ControlledScheduler()
  const fiber = Effect.runFork(Effect.withClock(effect, clock), { scheduler })
  const limit = options.maxVirtualMs ?? Number.POSITIVE_INFINITY
  let wakeups = 0
  const settle = () => {
    while (scheduler.tasks.buckets.length > 0) scheduler.step()
  }
  for (;;) {
    settle()
    const exit = fiber.unsafePoll()
    if (exit !== null) return { exit, elapsedMs: clock.unsafeCurrentTimeMillis(), wakeups }
    if (clock.unsafeCurrentTimeMillis() > limit || !clock.advance()) {
      const reason =
        clock.pendingSleeps === 0
          ? "deadlock: the program waits, but no fiber can run and nobody sleeps"
          : `no end after ${limit} virtual ms`
      fiber.unsafeInterruptAsFork(fiber.id())
      settle()
      return {
        exit: Exit.failCause(Cause.die(new Error(reason))),
        elapsedMs: clock.unsafeCurrentTimeMillis(),
        wakeups
      }
    }
    wakeups++
  }
}
