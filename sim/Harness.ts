import { Cause, Effect, Exit, Fiber, Logger, Random, type Scope } from "effect"
import type { VoteStoreShape } from "../src/VoteStore.js"
import * as VirtualTime from "./VirtualTime.js"

/**
 * What the simulations (sim/Simulation.ts, sim/ClusterSim.ts) share: drawing a scenario from a seed, the clients'
 * events, the record of one run (trace, checks, violations), requests with their time bound, running on virtual time,
 * shrinking an event list, and the parts of a failure report.
 */

// ---------------------------------------------------------------------------------------------------------------------
// Generation

/** An integer in [min, max], both included. */
export const int = (min: number, max: number) => Random.nextIntBetween(min, max + 1)

export const pick = <A>(items: ReadonlyArray<A>) => Effect.map(int(0, items.length - 1), (i) => items[i]!)

export const chance = (p: number) => Effect.map(Random.next, (x) => x < p)

/** What `draw` makes of the random numbers of `seed`: the same seed, the same scenario. */
export const drawn = <A>(seed: number, draw: Effect.Effect<A>): A =>
  Effect.runSync(draw.pipe(Effect.withRandom(Random.make(seed))))

/** What the clients do: votes and reads on an instance, and pauses between them. */
export type ClientEvent =
  | { readonly _tag: "Vote"; readonly instance: number; readonly poll: string; readonly option: string }
  | { readonly _tag: "Read"; readonly instance: number; readonly poll: string }
  | { readonly _tag: "Wait"; readonly ms: number }

export const drawVote = (
  instances: number,
  polls: ReadonlyArray<string>,
  options: ReadonlyArray<string>
): Effect.Effect<ClientEvent> =>
  Effect.gen(function* () {
    return {
      _tag: "Vote",
      instance: yield* int(0, instances - 1),
      poll: yield* pick(polls),
      option: yield* pick(options)
    }
  })

export const drawRead = (instances: number, polls: ReadonlyArray<string>): Effect.Effect<ClientEvent> =>
  Effect.gen(function* () {
    return { _tag: "Read", instance: yield* int(0, instances - 1), poll: yield* pick(polls) }
  })

/** Mostly up to two flush intervals; one in ten a long pause, from 500 ms to `longMaxMs`. */
export const drawWait = (flushIntervalMs: number, longMaxMs: number): Effect.Effect<ClientEvent> =>
  Effect.gen(function* () {
    const long = yield* chance(0.1)
    return { _tag: "Wait", ms: long ? yield* int(500, longMaxMs) : yield* int(1, flushIntervalMs * 2) }
  })

export const describeClientEvent = (event: ClientEvent): string => {
  switch (event._tag) {
    case "Vote":
      return `vote    i${event.instance} ${event.poll} ${event.option}`
    case "Read":
      return `read    i${event.instance} ${event.poll}`
    case "Wait":
      return `wait    ${event.ms}ms`
  }
}

export const describeCounts = (counts: Readonly<Record<string, number>>) =>
  `{${Object.keys(counts)
    .sort()
    .map((k) => `${k}:${counts[k]}`)
    .join(",")}}`

// ---------------------------------------------------------------------------------------------------------------------
// Running

/** The contract's bound on answering a request. */
export const ANSWER_WITHIN_MS = 2000

/** What every request of a simulation is checked for (see `request`). */
export const REQUEST_INVARIANTS = {
  slow: "every request is answered within 2 s",
  crash: "no defect escapes a layer"
} as const

/** What every simulation counts of its clients' requests, and of its checks. */
export interface ClientStats<I extends string> {
  events: number
  votes: number
  votesAccepted: number
  reads: number
  readsFailed: number
  checks: Record<I, number>
}

export interface Outcome<S, Stats, I extends string> {
  readonly scenario: S
  readonly variant: string
  /** The first violation seen. */
  readonly violation: Violation<I> | undefined
  /** Every violation seen (at most 50). */
  readonly violations: ReadonlyArray<Violation<I>>
  readonly stats: Stats
  readonly elapsedMs: number
  readonly wakeups: number
  /** What happened, one line per request and incident; only when asked for. */
  readonly trace: ReadonlyArray<string>
}

export interface Violation<I extends string> {
  readonly invariant: I
  /** Index of the event being run when it was seen, or -1 for the end-of-run checks. */
  readonly step: number
  readonly atMs: number
  readonly message: string
}

/** One run's account: its trace (when asked for), how often each invariant was checked, and what broke them. */
export class Recorder<I extends string> {
  readonly trace: Array<string> = []
  /** Every violation seen (at most 50). */
  readonly violations: Array<Violation<I>> = []
  readonly checks: Record<I, number>
  /** The event being run, or -1 outside the event list. */
  step = -1
  /** The run's clock, once it has one. */
  now: () => number = () => 0
  private sequence = 0

  constructor(
    invariants: Readonly<Record<I, string>>,
    private readonly tracing: boolean
  ) {
    this.checks = Object.fromEntries(Object.keys(invariants).map((k) => [k, 0])) as Record<I, number>
  }

  /** Orders everything that happens in one run, including events that share an instant. */
  readonly tick = () => this.sequence++

  readonly note = (line: string) => {
    if (this.tracing) this.trace.push(`${String(this.now()).padStart(6)}ms  ${line}`)
  }

  readonly fail = (invariant: I, message: string) => {
    if (this.violations.length < 50) this.violations.push({ invariant, step: this.step, atMs: this.now(), message })
    this.note(`VIOLATION ${invariant}: ${message}`)
  }

  readonly check = (invariant: I, ok: boolean, message: () => string) => {
    this.checks[invariant]++
    if (!ok) this.fail(invariant, message())
  }
}

/** A running app instance, as the simulations build it from the real layers. */
export interface App {
  readonly scope: Scope.CloseableScope
  readonly store: VoteStoreShape
  /** Its requests under way or answered; awaited before it stops. */
  readonly requests: Array<Fiber.RuntimeFiber<void>>
}

/** A request that died: neither answered nor failed with a typed error nor interrupted. */
export const isDefect = <A, E>(exit: Exit.Exit<A, E>): exit is Exit.Failure<A, E> =>
  Exit.isFailure(exit) && !Cause.isFailType(exit.cause) && !Cause.isInterruptedOnly(exit.cause)

/**
 * Sends `effect` as a request on instance `index`, forked into those of its process: `crash` sees its exit first, then its time
 * is checked against ANSWER_WITHIN_MS, then `done` gets the exit.
 */
export const request = <A>(
  recorder: Pick<Recorder<"slow">, "now" | "check">,
  index: number,
  requests: () => Array<Fiber.RuntimeFiber<void>>,
  effect: Effect.Effect<A, unknown>,
  crash: (exit: Exit.Exit<A, unknown>) => void,
  done: (exit: Exit.Exit<A, unknown>) => void
) =>
  Effect.gen(function* () {
    const startedMs = recorder.now()
    const fiber = yield* Effect.fork(
      Effect.flatMap(Effect.exit(effect), (exit) =>
        Effect.sync(() => {
          crash(exit)
          const took = recorder.now() - startedMs
          recorder.check("slow", took <= ANSWER_WITHIN_MS, () => `a request on i${index} took ${took}ms`)
          done(exit)
        })
      )
    )
    requests().push(fiber)
  })

export interface VoteRecord<Owner> {
  readonly owner: Owner
  readonly option: string
  /** The run's tick when it was sent, and when its answer came. */
  readonly start: number
  end: number | undefined
  /** Whether it was answered with success; undefined while it has no answer. */
  ok: boolean | undefined
}

/** Every vote a run sent, per poll, and which instance (or process) took it. */
export class Ballots<Owner> {
  private readonly byPoll = new Map<string, Array<VoteRecord<Owner>>>()

  constructor(private readonly tick: () => number) {}

  readonly of = (poll: string) => {
    let list = this.byPoll.get(poll)
    if (list === undefined) this.byPoll.set(poll, (list = []))
    return list
  }

  /**
   * Sends a vote with `send`, recorded as `owner`'s from now on; its answer, once `send` hands it over, is recorded,
   * counted in `stats` if accepted, and traced.
   */
  readonly cast = (
    event: { readonly instance: number; readonly poll: string; readonly option: string },
    owner: Owner,
    stats: { votesAccepted: number },
    note: (line: string) => void,
    send: (done: (exit: Exit.Exit<unknown, unknown>) => void) => Effect.Effect<void>
  ) => {
    const record: VoteRecord<Owner> = {
      owner,
      option: event.option,
      start: this.tick(),
      end: undefined,
      ok: undefined
    }
    this.of(event.poll).push(record)
    return send((exit) => {
      record.end = this.tick()
      record.ok = Exit.isSuccess(exit)
      if (record.ok) stats.votesAccepted++
      note(
        `i${event.instance} vote ${event.poll} ${event.option}: ` +
          (Exit.isSuccess(exit) ? "ok" : Cause.squash(exit.cause))
      )
    })
  }
}

/** The run's log lines go to its trace. */
export const logsToTrace = (note: (line: string) => void) =>
  Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ logLevel, message }) =>
      note(`log ${logLevel.label}: ${(Array.isArray(message) ? message : [message]).join(" ")}`)
    )
  )

/** Runs a scenario's program on virtual time, with room for its waits and ten virtual minutes besides. */
export const runVirtual = <A, E>(
  program: Effect.Effect<A, E>,
  events: ReadonlyArray<{ readonly _tag: string; readonly ms?: number }>
) => {
  const waited = events.reduce((ms, e) => ms + (e._tag === "Wait" ? e.ms! : 0), 0)
  return VirtualTime.run(program, { maxVirtualMs: waited + 600_000 })
}

/** A run's outcome: its record, and how long it took on virtual time. */
export const outcome = <S, Stats, I extends string>(
  scenario: S,
  variant: string,
  recorder: Recorder<I>,
  stats: Stats,
  result: { readonly elapsedMs: number; readonly wakeups: number }
): Outcome<S, Stats, I> => ({
  scenario,
  variant,
  violation: recorder.violations[0],
  violations: recorder.violations,
  stats,
  elapsedMs: result.elapsedMs,
  wakeups: result.wakeups,
  trace: recorder.trace
})

// ---------------------------------------------------------------------------------------------------------------------
// Shrinking and reporting

/**
 * Delta debugging over a list: drop halves, then quarters, ... then single items, keeping a shorter list whenever
 * `keeps` holds for it, until no single item can go or `exhausted` says the budget is spent.
 */
export const dropWhileKept = <A>(
  items: ReadonlyArray<A>,
  keeps: (candidate: ReadonlyArray<A>) => boolean,
  exhausted: () => boolean
): ReadonlyArray<A> => {
  let kept = items
  let chunk = Math.max(1, Math.floor(kept.length / 2))
  for (;;) {
    let removed = false
    for (let i = 0; i < kept.length;) {
      const candidate = [...kept.slice(0, i), ...kept.slice(i + chunk)]
      if (keeps(candidate)) {
        kept = candidate
        removed = true
      } else i += chunk
    }
    if ((chunk === 1 && !removed) || exhausted()) return kept
    if (!removed) chunk = Math.max(1, Math.floor(chunk / 2))
  }
}

/** The event list of a report, one numbered line each. */
export const formatEvents = <E>(events: ReadonlyArray<E>, describe: (event: E) => string) => [
  `  events (${events.length}):`,
  ...events.map((e, i) => `    #${String(i).padEnd(4)} ${describe(e)}`)
]

/** The head of a failure report: the invariant broken, what broke it, and where. */
export const formatViolation = <I extends string>(
  violation: Violation<I>,
  invariants: Readonly<Record<I, string>>,
  shrunk: string
) => [
  `  invariant ${violation.invariant}: ${invariants[violation.invariant]}`,
  `  ${violation.message}`,
  `  (at event #${violation.step < 0 ? "end" : violation.step}, ${violation.atMs} virtual ms${shrunk})`
]

/** The last lines of a trace, indented for a report. */
export const traceTail = (trace: ReadonlyArray<string>) => trace.slice(-80).map((line) => `    ${line}`)

/** The report's last lines: how to replay the scenario (`what` names it), and the scenario. */
export const replayLines = (what: string, scenario: unknown) => [
  `  ${what}: save the next line to a file, then SIM_REPLAY=<file> npm run sim`,
  JSON.stringify(scenario)
]
