/**
 * What a `WAIT` per one-vote-per-voter vote would cost on Redis Cluster: the cluster stage's voter script alone, as
 * the app sends it, against the same script followed by `WAIT 1 <timeout>` in one pipeline to the poll's master (the
 * only way to learn that a replica holds that vote before its 200). A throwaway 3 + 3 cluster (bench/processes.ts),
 * 50 votes in flight, each from a new voter on one of 1,000 polls, the two ways in alternating rounds; prints votes/s
 * and latency per round and the medians.
 *
 *   npx tsx bench/voterwait.ts [--votes 20000] [--rounds 3]
 */
import { Cluster } from "ioredis"
import { performance } from "node:perf_hooks"
import { parseArgs } from "node:util"
import { countsKey, VOTE_ONCE_SCRIPT, votersKey } from "../src/VoteStore/Redis.js"
import { startCluster } from "./processes.js"

const { values } = parseArgs({
  options: { votes: { type: "string", default: "20000" }, rounds: { type: "string", default: "3" } }
})
const VOTES = Number(values.votes)
const ROUNDS = Number(values.rounds)
const IN_FLIGHT = 50
const POLLS = 1000
/** What the cluster store gives WAIT: half the default command time-out. */
const WAIT_TIMEOUT_MS = 750

interface VotePipeline {
  livepollVoteOnce(counts: string, voters: string, option: string, voter: string, deadline: number): VotePipeline
  wait(replicas: number, timeoutMs: number): VotePipeline
  exec(): Promise<Array<[Error | null, unknown]> | null>
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!

const cluster = await startCluster("everysec")
const client = new Cluster(
  cluster.masters.map((m) => ({ host: "127.0.0.1", port: Number(new URL(m.url).port) })),
  { enableOfflineQueue: true }
)
client.defineCommand("livepollVoteOnce", { numberOfKeys: 2, lua: VOTE_ONCE_SCRIPT })

let voter = 0
const round = async (wait: boolean) => {
  const latencies: Array<number> = []
  let sent = 0
  const started = performance.now()
  const loop = async () => {
    while (sent < VOTES) {
      sent++
      const poll = `w-${voter % POLLS}`
      const id = `v-${voter++}`
      const pipeline = (client.pipeline() as unknown as VotePipeline).livepollVoteOnce(
        countsKey(poll),
        votersKey(poll),
        "A",
        id,
        0
      )
      if (wait) pipeline.wait(1, WAIT_TIMEOUT_MS)
      const at = performance.now()
      const replies = await pipeline.exec()
      const failed = replies?.find(([error]) => error !== null)
      if (replies === null || failed !== undefined) throw new Error(`vote failed: ${failed?.[0]?.message}`)
      if (wait && Number(replies[1]![1]) < 1) throw new Error("WAIT: no replica confirmed the vote")
      latencies.push(performance.now() - at)
    }
  }
  await Promise.all(Array.from({ length: IN_FLIGHT }, loop))
  const seconds = (performance.now() - started) / 1000
  latencies.sort((a, b) => a - b)
  return {
    perSecond: VOTES / seconds,
    p50: latencies[Math.floor(latencies.length * 0.5)]!,
    p99: latencies[Math.floor(latencies.length * 0.99)]!
  }
}

try {
  await client.ping()
  await round(false) // warm-up: scripts loaded, connections open
  type Round = Awaited<ReturnType<typeof round>>
  const results: Record<"script" | "wait", Array<Round>> = { script: [], wait: [] }
  for (let r = 0; r < ROUNDS; r++) {
    for (const wait of [false, true]) {
      const result = await round(wait)
      results[wait ? "wait" : "script"].push(result)
      console.log(
        `round ${r + 1} ${wait ? "script + WAIT 1" : "script alone  "}: ${result.perSecond.toFixed(0)} votes/s, ` +
          `p50 ${result.p50.toFixed(2)} ms, p99 ${result.p99.toFixed(2)} ms`
      )
    }
  }
  for (const [name, rows] of Object.entries(results)) {
    console.log(
      `median ${name === "wait" ? "script + WAIT 1" : "script alone  "}: ` +
        `${median(rows.map((r) => r.perSecond)).toFixed(0)} votes/s, p50 ${median(rows.map((r) => r.p50)).toFixed(2)} ms, ` +
        `p99 ${median(rows.map((r) => r.p99)).toFixed(2)} ms`
    )
  }
} finally {
  client.disconnect()
  await cluster.stop()
}
