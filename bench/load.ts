import autocannon from "autocannon"
import type { Workload } from "./options.js"

export const HOT_POLL = "hot"
export const SPREAD_POLLS = 10_000
/** The defined poll of the `voters` workload: one vote per voter, options as OPTIONS. */
export const VOTERS_POLL = "voters"
/** A few options per poll, so a hot poll's hash has several fields, as a real poll would. */
export const OPTIONS = ["A", "B", "C", "D"] as const

const BODIES = OPTIONS.map((o) => JSON.stringify({ option_id: o }))
const JSON_HEADERS = { "content-type": "application/json" }
const randomOption = () => OPTIONS[Math.floor(Math.random() * OPTIONS.length)]!
const randomBody = () => BODIES[Math.floor(Math.random() * BODIES.length)]!

/** The body that defines VOTERS_POLL (POST /api/v1/polls). */
export const votersPoll = JSON.stringify({
  id: VOTERS_POLL,
  question: "Which one?",
  options: OPTIONS.map((id) => ({ id, label: `Option ${id}` })),
  one_vote_per_voter: true
})

/** Voter ids that no earlier call has handed out, in this process or an earlier run against the same Redis. */
export const newVoters = () => {
  const run = `${process.pid.toString(36)}${Date.now().toString(36)}`
  let next = 0
  return () => `v${run}-${(next++).toString(36)}`
}

/** The requests of one workload, as autocannon builds them. `spread1m` needs to know how many distinct polls. */
export const requests = (workload: Workload, distinctPolls: number): Array<autocannon.Request> => {
  switch (workload) {
    case "hot":
      return [
        {
          method: "POST",
          path: `/vote/${HOT_POLL}`,
          headers: JSON_HEADERS,
          setupRequest: (request) => ({ ...request, body: randomBody() })
        }
      ]
    case "spread":
      return [
        {
          method: "POST",
          headers: JSON_HEADERS,
          setupRequest: (request) => ({
            ...request,
            path: `/vote/p${Math.floor(Math.random() * SPREAD_POLLS)}`,
            body: randomBody()
          })
        }
      ]
    case "spread1m": {
      // Every vote goes to a poll not voted on before (until the count wraps), the worst case for buffer and cache.
      let next = 0
      return [
        {
          method: "POST",
          headers: JSON_HEADERS,
          setupRequest: (request) => ({
            ...request,
            path: `/vote/m${next++ % distinctPolls}`,
            body: randomBody()
          })
        }
      ]
    }
    case "read":
      return [{ method: "GET", path: `/results/${HOT_POLL}` }]
    case "voters": {
      const voter = newVoters()
      return [
        {
          method: "POST",
          path: `/vote/${VOTERS_POLL}`,
          headers: JSON_HEADERS,
          setupRequest: (request) => ({
            ...request,
            body: `{"option_id":"${randomOption()}","voter_id":"${voter()}"}`
          })
        }
      ]
    }
  }
}

export interface Latency {
  readonly p50: number
  readonly p99: number
  readonly max: number
  readonly mean: number
}

export interface Load {
  /** 2xx answers: the work that was done. */
  readonly ok: number
  readonly non2xx: number
  /** Connection errors and timeouts. */
  readonly errors: number
  readonly seconds: number
  /** 2xx answers per second. */
  readonly rps: number
  /** Of the 2xx answers, in milliseconds, from our own record of each response time (autocannon's is whole ms). */
  readonly latencyMs: Latency
}

/** Growing record of response times; sorted once at the end. */
class Samples {
  private values = new Float64Array(1 << 16)
  size = 0
  add(value: number) {
    if (this.size === this.values.length) {
      const bigger = new Float64Array(this.values.length * 2)
      bigger.set(this.values)
      this.values = bigger
    }
    this.values[this.size++] = value
  }
  summary(): Latency {
    if (this.size === 0) return { p50: 0, p99: 0, max: 0, mean: 0 }
    const sorted = this.values.subarray(0, this.size).sort()
    const at = (q: number) => sorted[Math.min(this.size - 1, Math.ceil(q * this.size) - 1)]!
    let sum = 0
    for (const v of sorted) sum += v
    return { p50: at(0.5), p99: at(0.99), max: sorted[this.size - 1]!, mean: sum / this.size }
  }
}

export interface Running {
  /** 2xx answers so far. */
  readonly completed: () => number
  readonly stop: () => void
  readonly done: Promise<Load>
}

const running = new Set<Running>()

/** Stops every load still running (Ctrl-C). */
export const stopAllLoads = () => running.forEach((r) => r.stop())

/**
 * Drives `url` with autocannon: `connections` keep-alive connections, each sending its next request when the last
 * one is answered. Ends after `seconds`, or after `amount` requests if given (still bounded by `seconds`).
 */
export const start = (
  url: string,
  reqs: Array<autocannon.Request>,
  options: { readonly connections: number; readonly seconds: number; readonly amount?: number }
): Running => {
  const samples = new Samples()
  let ok = 0
  const begun = process.hrtime.bigint()
  const instance = autocannon(
    {
      url,
      connections: options.connections,
      requests: reqs,
      ...(options.amount === undefined ? { duration: options.seconds } : { amount: options.amount })
    },
    () => {}
  )
  let timer: NodeJS.Timeout | undefined
  if (options.amount !== undefined) timer = setTimeout(() => instance.stop(), options.seconds * 1000)
  instance.on("response", (_client, status, _bytes, responseTime) => {
    if (status >= 200 && status < 300) {
      ok++
      samples.add(responseTime)
    }
  })
  const done = new Promise<Load>((resolve, reject) => {
    instance.once("error", reject)
    instance.once("done", (result) => {
      const seconds = Number(process.hrtime.bigint() - begun) / 1e9
      resolve({
        ok,
        non2xx: result.non2xx,
        errors: result.errors,
        seconds,
        rps: ok / seconds,
        latencyMs: samples.summary()
      })
    })
  }).finally(() => {
    clearTimeout(timer)
    running.delete(handle)
  })
  const handle: Running = { completed: () => ok, stop: () => instance.stop(), done }
  running.add(handle)
  return handle
}

export const drive = (
  url: string,
  reqs: Array<autocannon.Request>,
  options: { readonly connections: number; readonly seconds: number }
): Promise<Load> => start(url, reqs, options).done
