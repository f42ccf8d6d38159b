import type { Redis } from "ioredis"
import type { App } from "./app.js"
import { sleep } from "./wait.js"

export interface LoadReport {
  /** 200s per `poll/option`. */
  readonly accepted: Map<string, number>
  readonly acceptedTotal: number
  /** Answers other than 200 (e.g. 503 while a store is down): not counted, and must not be. */
  readonly refused: number
  /** Requests with no answer at all (the process died mid-request): may or may not have been counted. */
  readonly unanswered: number
}

export interface LoadOptions {
  readonly polls: ReadonlyArray<string>
  readonly options: ReadonlyArray<string>
  readonly clients: number
  readonly until: Promise<unknown>
}

/**
 * `clients` concurrent loops until `until` resolves, each sending one vote at a time: every poll in turn with one
 * option, then every poll with the next option, the loops taking the next vote of that one sequence. `send` gets to
 * know whether the load is done, for a vote it sends again.
 */
export const voteLoops = async (
  options: LoadOptions,
  send: (poll: string, option: string, done: () => boolean) => Promise<void>
): Promise<void> => {
  let done = false
  void options.until.then(() => (done = true))
  let sequence = 0
  const client = async () => {
    while (!done) {
      const n = sequence++
      const poll = options.polls[n % options.polls.length]!
      const option = options.options[Math.floor(n / options.polls.length) % options.options.length]!
      await send(poll, option, () => done)
    }
  }
  await Promise.all(Array.from({ length: options.clients }, client))
}

/**
 * Votes from `clients` concurrent loops over `polls` x `options` until `until` resolves. Each loop sends one vote at
 * a time and records its outcome, so the report says exactly which votes were promised.
 */
export const runLoad = async (app: () => App, options: LoadOptions): Promise<LoadReport> => {
  const accepted = new Map<string, number>()
  let refused = 0
  let unanswered = 0
  await voteLoops(options, async (poll, option) => {
    try {
      const reply = await app().vote(poll, option)
      if (reply.status === 200) accepted.set(`${poll}/${option}`, (accepted.get(`${poll}/${option}`) ?? 0) + 1)
      else refused++
    } catch {
      unanswered++
      await sleep(20)
    }
  })
  let acceptedTotal = 0
  for (const n of accepted.values()) acceptedTotal += n
  return { accepted, acceptedTotal, refused, unanswered }
}

/** What a Redis server holds for these polls, as `poll/option` -> count. */
export const storedCounts = async (
  server: { readonly client: () => Redis },
  polls: ReadonlyArray<string>
): Promise<Map<string, number>> => {
  const client = server.client()
  const counts = new Map<string, number>()
  for (const poll of polls) {
    const hash = await client.hgetall(`poll:{${poll}}:counts`)
    for (const [option, n] of Object.entries(hash)) counts.set(`${poll}/${option}`, Number(n))
  }
  client.disconnect()
  return counts
}

export const total = (counts: ReadonlyMap<string, number>) => [...counts.values()].reduce((a, b) => a + b, 0)

/** Per poll and option: votes answered 200 but not stored (lost), and stored beyond the 200s (doubled). */
export const compare = (accepted: ReadonlyMap<string, number>, stored: ReadonlyMap<string, number>) => {
  let lost = 0
  let doubled = 0
  for (const key of new Set([...accepted.keys(), ...stored.keys()])) {
    const difference = (stored.get(key) ?? 0) - (accepted.get(key) ?? 0)
    if (difference < 0) lost -= difference
    else doubled += difference
  }
  return { lost, doubled }
}
