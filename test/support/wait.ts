/** Real-time waiting for tests that drive real processes and real I/O; unit logic uses Effect's TestClock instead. */

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

export interface EventuallyOptions {
  readonly timeoutMs?: number
  readonly intervalMs?: number
  /** Names the condition in the error thrown on timeout. */
  readonly what?: string
}

/**
 * Reads until a condition holds, in one of two styles.
 *
 * `eventually(probe, options)`: until `probe` gives a value other than undefined, and returns it; throws naming `what`
 * after `timeoutMs` (5 s).
 *
 * `eventually(read, done, timeoutMs)`: until `done(value)` holds, and returns that value; after `timeoutMs` (15 s) it
 * returns the last value read without throwing, so the caller's assertions on it report what was there instead.
 */
export function eventually<A>(probe: () => Promise<A | undefined>, options?: EventuallyOptions): Promise<A>
export function eventually<A>(read: () => Promise<A>, done: (a: A) => boolean, timeoutMs?: number): Promise<A>
export async function eventually<A>(
  read: () => Promise<A | undefined>,
  second?: EventuallyOptions | ((a: A) => boolean),
  timeoutMs?: number
): Promise<A | undefined> {
  const orLast = typeof second === "function"
  const done = orLast ? (a: A | undefined) => second(a as A) : (a: A | undefined) => a !== undefined
  const options: EventuallyOptions = orLast ? { timeoutMs: timeoutMs ?? 15_000, intervalMs: 100 } : (second ?? {})
  const { timeoutMs: limit = 5000, intervalMs = 25, what = "condition" } = options
  const deadline = Date.now() + limit
  for (;;) {
    const value = await read()
    if (done(value)) return value
    if (Date.now() > deadline) {
      if (orLast) return value
      throw new Error(`${what} not reached within ${limit} ms`)
    }
    await sleep(intervalMs)
  }
}
