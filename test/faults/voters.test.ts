import { describe, expect, it } from "vitest"
import type { App } from "../support/app.js"
import { appsOnRedis } from "../support/onRedis.js"
import { sleep } from "../support/wait.js"

/**
 * One vote per voter while the node stalls past the command timeout. A vote that got 503 was not counted and left no
 * voter record behind, even though its command reached the node after the pause: its retry is counted, never turned
 * away as already cast.
 */

const OPTIONS = ["A", "B", "C"]

const { redis, start: startOnRedis } = appsOnRedis()

interface Outcome {
  /** Each voter's option, once its vote was answered 200. */
  readonly counted: Map<string, string>
  /** 503 store_unavailable answers, each retried. */
  readonly retried: number
  /** Answers that are neither 200 nor 503: a voter turned away, or worse. */
  readonly wrong: Array<string>
}

/**
 * `clients` loops, each casting votes by new voters until `until` resolves; a vote answered 503 is retried by the same
 * voter with the same option until it is answered otherwise.
 */
const voteUntil = async (
  app: App,
  pollId: string,
  clients: number,
  until: Promise<unknown>,
  withVoter = true
): Promise<Outcome> => {
  const counted = new Map<string, string>()
  const wrong: Array<string> = []
  let retried = 0
  let done = false
  void until.then(() => (done = true))
  let sequence = 0
  const client = async () => {
    while (!done) {
      const voter = `voter-${sequence++}`
      const option = OPTIONS[sequence % OPTIONS.length]!
      for (;;) {
        const reply = await app.request(
          "POST",
          `/api/v1/vote/${pollId}`,
          JSON.stringify(withVoter ? { option_id: option, voter_id: voter } : { option_id: option })
        )
        if (reply.status === 200) counted.set(voter, option)
        else if (reply.status === 503 && reply.json?.error === "store_unavailable") {
          retried++
          await sleep(50)
          continue
        } else wrong.push(`${voter}: ${reply.status} ${reply.text}`)
        break
      }
    }
  }
  await Promise.all(Array.from({ length: clients }, client))
  return { counted, retried, wrong }
}

describe.each(["redis", "batched"])("one vote per voter, %s stage, node stalled past the command timeout", (stage) => {
  it("a 503 leaves no record: every retry is counted once, and nothing else is", async () => {
    const app = await startOnRedis({ env: { POLL_STAGE: stage, FLUSH_INTERVAL_MS: "300" } })
    const pollId = `stall-${stage}`
    const created = await app.request(
      "POST",
      "/api/v1/polls",
      JSON.stringify({
        id: pollId,
        question: "Which?",
        options: OPTIONS.map((id) => ({ id, label: id })),
        one_vote_per_voter: true
      })
    )
    expect(created.status).toBe(201)
    const admin = redis().client()
    const outcome = voteUntil(app, pollId, 12, sleep(4500))
    await sleep(500)
    // Writes wait 2.5 s, past the 1.5 s command timeout: the votes sent meanwhile get 503, and their commands reach
    // the node once the pause ends.
    await admin.call("CLIENT", "PAUSE", "2500", "WRITE")
    const { counted, retried, wrong } = await outcome
    expect(wrong).toEqual([])
    expect(retried).toBeGreaterThan(0)

    const expected: Record<string, number> = Object.fromEntries(OPTIONS.map((o) => [o, 0]))
    for (const option of counted.values()) expected[option]!++
    const stored = async () => {
      const hash = await admin.hgetall(`poll:{${pollId}}:counts`)
      return Object.fromEntries(OPTIONS.map((o) => [o, Number(hash[o] ?? 0)]))
    }
    await sleep(1000)
    expect(await stored()).toEqual(expected)
    expect((await app.results(pollId)).json.results).toEqual(expected)
    // Exactly the voters answered 200 have a record.
    expect((await admin.smembers(`poll:{${pollId}}:voters`)).sort()).toEqual([...counted.keys()].sort())
    console.log(
      `fault stalled-voters ${stage}: accepted=${counted.size} stored=${Object.values(expected).reduce((a, b) => a + b, 0)} retried-503=${retried} lost=0 doubled=0`
    )
    admin.disconnect()
    await app.stop()
  })
})

describe("ad-hoc votes, redis stage (write-through), node stalled past the command timeout", () => {
  it("a vote answered 503 is not counted when its command reaches the node late: retries count exactly once", async () => {
    const app = await startOnRedis({ env: { POLL_STAGE: "redis" } })
    const pollId = "stall-adhoc"
    const admin = redis().client()
    const outcome = voteUntil(app, pollId, 12, sleep(4500), false)
    await sleep(500)
    await admin.call("CLIENT", "PAUSE", "2500", "WRITE")
    const { counted, retried, wrong } = await outcome
    expect(wrong).toEqual([])
    expect(retried).toBeGreaterThan(0)
    const expected: Record<string, number> = {}
    for (const option of counted.values()) expected[option] = (expected[option] ?? 0) + 1
    await sleep(500)
    const hash = await admin.hgetall(`poll:{${pollId}}:counts`)
    expect(Object.fromEntries(Object.entries(hash).map(([o, n]) => [o, Number(n)]))).toEqual(expected)
    console.log(`fault stalled-adhoc redis: accepted=${counted.size} retried-503=${retried} lost=0 doubled=0`)
    admin.disconnect()
    await app.stop()
  })
})
