import { Redis } from "ioredis"
import { HOT_POLL, newVoters, OPTIONS, SPREAD_POLLS, VOTERS_POLL } from "./load.js"

/** The same hash layout as the app (`poll:{id}:counts`), under ids of their own. */
const key = (poll: string) => `poll:{direct-${poll}}:counts`
const votersKey = (poll: string) => `poll:{direct-${poll}}:voters`
const option = () => OPTIONS[Math.floor(Math.random() * OPTIONS.length)]!

/** Commands each pipelined round trip carries, and how many such round trips are in flight at once. */
export const PIPELINE_SIZE = 1000
const PIPELINES_IN_FLIGHT = 2

export type DirectWorkload = "hot" | "spread" | "read" | "voters"

export interface DirectResult {
  readonly command: string
  readonly mode: "unpipelined" | "pipelined"
  readonly ops: number
  readonly seconds: number
  readonly opsPerSecond: number
  readonly errors: number
}

const commandOf = (workload: DirectWorkload) =>
  workload === "read" ? "HGETALL" : workload === "voters" ? "SADD+HINCRBY" : "HINCRBY"

/** What the Redis client and its pipeline have in common, for the two commands used here. */
interface Target {
  hincrby(key: string, field: string, increment: number): unknown
  hgetall(key: string): unknown
  sadd(key: string, member: string): unknown
}

/** One unit of the workload: one command, or for `voters` the voter's SADD and then the vote's HINCRBY. */
const issue = (client: Target, workload: DirectWorkload, voter: () => string): unknown => {
  switch (workload) {
    case "hot":
      return client.hincrby(key(HOT_POLL), option(), 1)
    case "spread":
      return client.hincrby(key(`p${Math.floor(Math.random() * SPREAD_POLLS)}`), option(), 1)
    case "read":
      return client.hgetall(key(HOT_POLL))
    case "voters": {
      const recorded = client.sadd(votersKey(VOTERS_POLL), voter())
      // Unpipelined, the vote waits for the voter's record, as the app's does; in a pipeline both just queue.
      return recorded instanceof Promise
        ? recorded.then(() => client.hincrby(key(VOTERS_POLL), option(), 1))
        : client.hincrby(key(VOTERS_POLL), option(), 1)
    }
  }
}

/**
 * What Redis itself does for the workload's command through one ioredis connection, no HTTP: `unpipelined` keeps
 * `concurrency` commands in flight, each awaited on its own; `pipelined` sends PIPELINE_SIZE commands per round trip.
 */
export const run = async (
  url: string,
  workload: DirectWorkload,
  mode: "unpipelined" | "pipelined",
  options: { readonly seconds: number; readonly concurrency: number; readonly stopped: () => boolean }
): Promise<DirectResult> => {
  const client = new Redis(url, { maxRetriesPerRequest: 1, commandTimeout: 5000 })
  client.on("error", () => {})
  try {
    await client.ping()
    if (workload === "read") await client.hset(key(HOT_POLL), Object.fromEntries(OPTIONS.map((o) => [o, 1])))
    const voter = newVoters()
    let ops = 0
    let errors = 0
    const begun = process.hrtime.bigint()
    const deadline = Date.now() + options.seconds * 1000
    const going = () => Date.now() < deadline && !options.stopped()
    const unpipelined = async () => {
      while (going()) {
        try {
          await (issue(client, workload, voter) as Promise<unknown>)
          ops++
        } catch {
          errors++
        }
      }
    }
    const pipelined = async () => {
      while (going()) {
        const pipeline = client.pipeline()
        for (let i = 0; i < PIPELINE_SIZE; i++) issue(pipeline, workload, voter)
        try {
          const answers = (await pipeline.exec()) ?? []
          // A unit of `voters` is two commands: it counts once, failed if either failed.
          const per = answers.length / PIPELINE_SIZE
          for (let i = 0; i < answers.length; i += per) {
            if (answers.slice(i, i + per).some(([error]) => error)) errors++
            else ops++
          }
        } catch {
          errors += PIPELINE_SIZE
        }
      }
    }
    const loops = mode === "unpipelined" ? options.concurrency : PIPELINES_IN_FLIGHT
    await Promise.all(Array.from({ length: loops }, mode === "unpipelined" ? unpipelined : pipelined))
    const seconds = Number(process.hrtime.bigint() - begun) / 1e9
    return { command: commandOf(workload), mode, ops, seconds, opsPerSecond: ops / seconds, errors }
  } finally {
    client.disconnect()
  }
}
