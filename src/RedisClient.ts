import { Duration, Effect, Runtime, type Scope } from "effect"
import { Redis } from "ioredis"
import { StoreUnavailable } from "./Domain.js"
import { Metrics, type RedisErrorReason } from "./Metrics.js"

/**
 * A command that has not answered in this time fails, so callers get a 503 within the contract's 2 s. The default of
 * `REDIS_COMMAND_TIMEOUT_MS`; a node may set its own (`commandTimeoutMs`).
 */
export const COMMAND_TIMEOUT_MS = 1500
/** The second guard of `caller` fires this long after the command's own time-out. */
const GUARD_MARGIN_MS = 200
/**
 * A connection attempt that takes longer is given up and tried again; the start waits at most this long for the first,
 * so a node that is down does not hold it up.
 */
const CONNECT_TIMEOUT_MS = 1000

export interface RedisNode {
  readonly url: string
  /** The node's name: `served_via` of reads and the label in health and logs. */
  readonly name: string
  /** How long a command may go unanswered before it fails (`REDIS_COMMAND_TIMEOUT_MS`); COMMAND_TIMEOUT_MS if unset. */
  readonly commandTimeoutMs?: number
}

/** The node's command time-out, as configured or by default. */
export const commandTimeoutOf = (node: Pick<RedisNode, "commandTimeoutMs">): number =>
  node.commandTimeoutMs ?? COMMAND_TIMEOUT_MS

export interface ConnectOptions {
  /** A pub/sub connection: commands wait for the connection instead of failing, and subscriptions are restored. */
  readonly subscriber?: boolean
}

/** How long ioredis waits before its next connection attempt: 100 ms more each time, a second at most. */
export const retryDelay = (attempt: number): number => Math.min(attempt * 100, 1000)

/** A client (a node's or a cluster's) made in the current scope, quit when the scope closes. */
export const scoped = <C extends { readonly status: string; quit(): Promise<unknown>; disconnect(): void }>(
  make: () => C
): Effect.Effect<C, never, Scope.Scope> =>
  Effect.acquireRelease(Effect.sync(make), (client) =>
    // A client that is not connected has nothing to say goodbye over (and a pub/sub client would queue the QUIT
    // forever). Release steps are uninterruptible by default: the timeout needs `interruptible` to bite.
    (client.status === "ready" ? Effect.promise(() => client.quit()) : Effect.void).pipe(
      Effect.interruptible,
      Effect.timeout(Duration.seconds(1)),
      Effect.ignore,
      Effect.ensuring(Effect.sync(() => client.disconnect()))
    )
  )

/**
 * An ioredis client in the current scope, quit when the scope closes. Commands fail fast while the node is down
 * (no unbounded offline queue) and ioredis reconnects by itself; connection changes are logged once each.
 */
export const acquire = (node: RedisNode, options: ConnectOptions = {}): Effect.Effect<Redis, never, Scope.Scope> =>
  Effect.gen(function* () {
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    // The node's error counters exist from its first connection on, at 0 until a command fails (see `caller`).
    ;(yield* Metrics).redisNode(node.name)
    const role = options.subscriber ? " (pub/sub)" : ""
    const client = yield* scoped(
      () =>
        new Redis(node.url, {
          enableOfflineQueue: options.subscriber === true,
          maxRetriesPerRequest: options.subscriber ? null : 1,
          commandTimeout: options.subscriber ? undefined : commandTimeoutOf(node),
          connectTimeout: CONNECT_TIMEOUT_MS,
          retryStrategy: retryDelay
        })
    )
    // undefined until the first connection attempt settles, so a node that is down at start-up is logged too.
    let reachable: boolean | undefined = undefined
    client.on("ready", () => {
      reachable = true
      runFork(Effect.logInfo(`redis node ${node.name} connected${role}`).pipe(Effect.annotateLogs("url", node.url)))
    })
    client.on("error", (error: Error) => {
      // ioredis emits one error per reconnect attempt; log the transition only.
      if (reachable !== false) {
        reachable = false
        if (!options.subscriber) runFork(Effect.logWarning(`redis node ${node.name} unreachable: ${error.message}`))
      }
    })
    client.on("end", () => {
      reachable = false
    })
    // Give the first connection a moment, so an app whose Redis is up does not answer 503 in its first milliseconds;
    // a node that is down does not hold up the start (the app starts and reconnects by itself).
    if (!options.subscriber) {
      yield* Effect.async<void>((resume) => {
        const settle = () => {
          clearTimeout(timer)
          client.off("ready", settle)
          client.off("error", settle)
          resume(Effect.void)
        }
        const timer = setTimeout(settle, CONNECT_TIMEOUT_MS)
        client.once("ready", settle)
        client.once("error", settle)
      })
    }
    return client
  })

/**
 * How long before a command's time-out a fenced script stops applying it: the time its answer has to come back.
 * `REDIS_COMMAND_TIMEOUT_MS` is bounded above it.
 */
export const FENCE_MARGIN_MS = 300
/** A clock reading whose round trip took this long says too little to be used. */
const CLOCK_MAX_ROUND_TRIP_MS = 1000
/** The offset is measured again this often: the two clocks drift apart. */
const CLOCK_INTERVAL_MS = 30_000
/** Until a reading has succeeded, another is tried this often. */
const CLOCK_RETRY_MS = 250

/** The Lua that turns a script away once the node's clock is past ARGV[i], a `deadline()`; 0 means no fence. */
export const fence = (i: number) => `
if tonumber(ARGV[${i}]) > 0 then
  local now = redis.call('TIME')
  if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[${i}]) then return -2 end
end`

/** A write fenced on a node's clock: see `serverClock`. */
export interface ServerClock {
  /**
   * Sends a write with the deadline of one that starts now, on the node's clock. Until the node's clock has been read
   * once, it asks for a reading and waits for it, and fails without sending if none comes before the deadline would
   * have passed: a write sent without a fence could be applied after its caller gave up.
   */
  readonly fenced: <A>(send: (deadline: number) => Promise<A>) => Promise<A>
}

/**
 * The node's clock as this process sees it, so that a write which reaches the node after its caller gave up (and
 * answered 503) is not applied: a late write would otherwise be counted though the client was told it was not, and
 * counted again when the client retries. Measured with TIME when the connection is ready, every 30 s, and whenever a
 * write is waiting for a first reading, as an offset, so the two hosts' clocks need not agree. The node read its clock
 * somewhere within the round trip, so the offset is taken at its earliest (node time minus our time when the answer
 * came): a deadline is then early by at most the round trip, never late. `timeoutMs` is the command time-out of the
 * client's node.
 */
export const serverClock = (client: Redis, timeoutMs: number): Effect.Effect<ServerClock, never, Scope.Scope> =>
  Effect.gen(function* () {
    let offset: number | undefined
    let retry: NodeJS.Timeout | undefined
    /** TIMEs sent and not answered yet: a write waiting for the first reading asks for one only when none is. */
    let inFlight = 0
    /** Writes waiting for the first reading. */
    const waiting = new Set<() => void>()
    const measure = () => {
      inFlight++
      clearTimeout(retry)
      const sentAt = Date.now()
      client.time().then(
        ([seconds, micros]) => {
          inFlight--
          const receivedAt = Date.now()
          if (receivedAt - sentAt <= CLOCK_MAX_ROUND_TRIP_MS) {
            offset = Number(seconds) * 1000 + Number(micros) / 1000 - receivedAt
            for (const resume of waiting) resume()
            waiting.clear()
          } else if (offset === undefined) retry = setTimeout(measure, CLOCK_RETRY_MS)
        },
        () => {
          // Not connected: the next connection, or the next waiting write, measures again.
          inFlight--
        }
      )
    }
    client.on("ready", measure)
    if (client.status === "ready") measure()
    const timer = setInterval(measure, CLOCK_INTERVAL_MS)
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        clearInterval(timer)
        clearTimeout(retry)
      })
    )
    const windowMs = timeoutMs - FENCE_MARGIN_MS
    const firstReading = () =>
      new Promise<void>((resolve, reject) => {
        const resume = () => {
          clearTimeout(giveUp)
          resolve()
        }
        const giveUp = setTimeout(() => {
          waiting.delete(resume)
          reject(new Error("timed out waiting for a reading of the node's clock"))
        }, windowMs)
        waiting.add(resume)
        if (inFlight === 0) measure()
      })
    const deadlineFrom = (start: number) => Math.floor(start + offset! + windowMs)
    return {
      fenced: <A>(send: (deadline: number) => Promise<A>): Promise<A> => {
        const start = Date.now()
        if (offset !== undefined) return send(deadlineFrom(start))
        return firstReading().then(() => send(deadlineFrom(start)))
      }
    }
  })

const describe = (error: unknown): { readonly reason: RedisErrorReason; readonly message: string } => {
  const message = error instanceof Error ? error.message : String(error)
  if (message.includes("enableOfflineQueue")) return { reason: "not_connected", message: "not connected" }
  if (message.includes("timed out")) return { reason: "timeout", message: "no answer in time" }
  return { reason: "error", message }
}

/**
 * A failed call, counted in the node's errors. The metrics are looked up only here: a lookup is a step that needs a
 * fiber (Http/Run.ts), which a call that succeeds must not.
 */
const failure = (node: string, reason: RedisErrorReason, message: string) =>
  Effect.flatMap(Metrics, (metrics) => {
    metrics.redisError(node, reason)
    return Effect.fail(new StoreUnavailable({ node, reason: message }))
  })

/** A call not answered yet, and what ends it when its guard runs out. */
interface Guarded {
  readonly expires: number
  readonly expire: () => void
}

/**
 * The second guards of one caller's calls, on one timer. Every call expires `guardMs` after it began, so calls expire
 * in the order they began: the timer waits for the oldest only. An answered call just leaves the set, where a timer
 * per call would be made and cleared on every vote of the Redis stages.
 */
const guards = (guardMs: number) => {
  const pending = new Set<Guarded>()
  let timer: NodeJS.Timeout | undefined
  const arm = (ms: number) => {
    timer = setTimeout(sweep, ms)
    // The client's own socket (or its reconnect timer) keeps the process up while a call waits: the guard need not.
    timer.unref()
  }
  const sweep = () => {
    timer = undefined
    const now = Date.now()
    for (const call of pending) {
      if (call.expires > now) return arm(call.expires - now)
      pending.delete(call)
      call.expire()
    }
  }
  return {
    add: (call: Guarded) => {
      pending.add(call)
      if (timer === undefined) arm(guardMs)
    },
    delete: (call: Guarded) => void pending.delete(call)
  }
}

/**
 * Runs one client call as an Effect that fails with StoreUnavailable naming the node, and never hangs: ioredis's own
 * command timeout ends a call that gets no answer, and a guard here is a second one in case the client itself hangs
 * (for example mid-reconnect). Not `Effect.timeout`, nor a timer per call: this sits on every vote of the Redis
 * stages, and racing a forked fiber costs more than the command.
 */
export const caller = (target: Pick<RedisNode, "name" | "commandTimeoutMs">) => {
  const node = target.name
  const guardMs = commandTimeoutOf(target) + GUARD_MARGIN_MS
  const guarded = guards(guardMs)
  return <A>(what: string, run: () => Promise<A>): Effect.Effect<A, StoreUnavailable> =>
    Effect.async<A, StoreUnavailable>((resume) => {
      let settled = false
      const settle = (effect: Effect.Effect<A, StoreUnavailable>) => {
        if (settled) return
        settled = true
        guarded.delete(call)
        resume(effect)
      }
      const failed = (error: unknown) => {
        const { reason, message } = describe(error)
        settle(failure(node, reason, `${what} failed: ${message}`))
      }
      const call: Guarded = {
        expires: Date.now() + guardMs,
        expire: () => settle(failure(node, "timeout", `${what}: timed out`))
      }
      guarded.add(call)
      try {
        run().then((value) => settle(Effect.succeed(value)), failed)
      } catch (error) {
        failed(error)
      }
      // No canceller: an interrupted caller's call just stays guarded until it settles or expires (its resume is
      // then ignored), and without one a request can wait for its answer without a fiber (Http/Run.ts).
    })
}
