import { type ChildProcess, spawn } from "node:child_process"
import { createInterface } from "node:readline"
import { Effect, Logger } from "effect"
import type { Redis } from "ioredis"
import { beforeAll, describe, expect, it } from "vitest"
import { parseRedisNodes } from "../../src/Config.js"
import { positionKey, positionOf } from "../../src/Polls.js"
import { CREATED_KEY, INDEX_KEY } from "../../src/Polls/Redis.js"
import * as Reshard from "../../src/Reshard.js"
import * as Ring from "../../src/Ring.js"
import { type App, startApp } from "../support/app.js"
import { threeShards } from "../support/shards.js"

/**
 * `npm run reshard` over real redis-servers: 300 polls of every kind voted on a two-shard `full` app, a third shard
 * added, the polls moved, and the app on three shards serving each exactly as before; runs interrupted at each step of
 * a poll's move (and a killed process) finish exact when run again.
 */

const POLLS = 300
const START_TIMEOUT_MS = 60_000

const { servers, raw, twoNodes, threeNodes } = threeShards()
const nodesOf = (list: string) => {
  const parsed = parseRedisNodes(list)
  if (parsed._tag === "Left") throw new Error(parsed.left)
  return parsed.right
}
const NAMES2 = ["node_a", "node_b"]
const NAMES3 = ["node_a", "node_b", "node_c"]
/** Built once each: a ring of 4096 points per node takes milliseconds to build. */
const RING2 = Ring.make(NAMES2)
const RING3 = Ring.make(NAMES3)
const ringOf = (names: ReadonlyArray<string>) => (names.length === 2 ? RING2 : RING3)

type Kind = "defined" | "voters" | "closed" | "adhoc"
const kindOf = (i: number): Kind => (["defined", "voters", "closed", "adhoc", "adhoc"] as const)[i % 5]!
const pollIdOf = (i: number) => `r-${i}`
/** Votes poll i gets: A (1 + i % 3) times, B when i is odd. */
const votesOf = (i: number) => [...Array.from({ length: 1 + (i % 3) }, () => "A"), ...(i % 2 === 1 ? ["B"] : [])]
const voterOf = (i: number, k: number) => `v${i}-${k}`

/** What the app answered before the move, per poll: counts, definition; and the organiser keys, for closing. */
const expected = new Map<string, { results: Record<string, number>; definition: unknown }>()
const organiserKeys = new Map<string, string>()
/** The two old nodes' keys as the app left them, to start each interrupted run from. */
let seeded: Record<string, Array<[string, Buffer]>> = {}
/** Every poll's stored state as read straight from its owner on the old ring. */
let seededState: Map<string, PollState>

const JSON_HEADERS = { "content-type": "application/json" }
const post = (app: App, path: string, body: unknown, headers: Record<string, string> = {}) =>
  app.request("POST", path, JSON.stringify(body), { ...JSON_HEADERS, ...headers })

const inBatches = async <A>(items: ReadonlyArray<A>, size: number, run: (item: A) => Promise<void>) => {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(run))
}

/** Every key of a node, with its DUMP. */
const snapshot = async (client: Redis) => {
  const keys = (await client.keys("*")).sort()
  const out: Array<[string, Buffer]> = []
  for (const key of keys) out.push([key, (await client.dumpBuffer(key))!])
  return out
}
const restore = async (client: Redis, keys: ReadonlyArray<[string, Buffer]>) => {
  await client.flushall()
  for (const [key, dump] of keys) await client.restore(key, 0, dump)
}
const seed = async () => {
  await restore(raw.node_a!, seeded.node_a!)
  await restore(raw.node_b!, seeded.node_b!)
  await raw.node_c!.flushall()
}

interface PollState {
  readonly counts: Record<string, string>
  readonly voters: ReadonlyArray<string>
  readonly definition: string | null
  readonly organiser: string | null
  readonly indexed: boolean
  readonly listed: boolean
}

const isPollData = (rest: string) =>
  ["counts", "voters", "definition", "organiser"].includes(rest) || rest.startsWith("moving:")

/**
 * Each poll as its owner on `names`'s ring holds it; fails if any other node holds its data, staged data, or an index
 * entry (a tombstone where it moved from may stay).
 */
const stateOn = async (names: ReadonlyArray<string>) => {
  const ring = ringOf(names)
  const ids = new Set<string>()
  for (const name of NAMES3) {
    for (const key of await raw[name]!.keys("poll:{*")) {
      const m = /^poll:\{([^}]+)\}:(.+)$/.exec(key)!
      const [, id, rest] = m
      if (!isPollData(rest!)) continue
      ids.add(id!)
      expect({ key, on: name }).toEqual({ key, on: Ring.nodeFor(ring, id!) })
    }
  }
  const state = new Map<string, PollState>()
  for (const id of [...ids].sort()) {
    const owner = raw[Ring.nodeFor(ring, id)]!
    const definition = await owner.get(`poll:{${id}}:definition`)
    const position = definition === null ? undefined : positionKey(positionOf(JSON.parse(definition)))
    state.set(id, {
      counts: await owner.hgetall(`poll:{${id}}:counts`),
      voters: (await owner.smembers(`poll:{${id}}:voters`)).sort(),
      definition,
      organiser: await owner.get(`poll:{${id}}:organiser`),
      indexed: (await owner.sismember(INDEX_KEY, id)) === 1,
      listed: position !== undefined && (await owner.zscore(CREATED_KEY, position)) !== null
    })
    for (const name of NAMES3) {
      if (raw[name] === owner) continue
      expect({ id, name, indexed: await raw[name]!.sismember(INDEX_KEY, id) }).toEqual({ id, name, indexed: 0 })
      if (position !== undefined) {
        expect({ id, name, listed: await raw[name]!.zscore(CREATED_KEY, position) }).toEqual({ id, name, listed: null })
      }
    }
  }
  return state
}

/** Runs the reshard in this process; its log lines are returned with the report (or the failure). */
const reshard = async (options: Partial<Reshard.Options> = {}) => {
  const lines: Array<string> = []
  const logger = Logger.make(({ message }) => lines.push(Array.isArray(message) ? message.join(" ") : String(message)))
  const exit = await Effect.runPromiseExit(
    Reshard.run({ from: nodesOf(twoNodes()), to: nodesOf(threeNodes()), ...options }).pipe(
      Effect.provide(Logger.replace(Logger.defaultLogger, logger))
    )
  )
  return { exit, lines, report: exit._tag === "Success" ? exit.value : undefined }
}

const cli = (args: ReadonlyArray<string>) => {
  const child = spawn(process.execPath, ["--import", "tsx", "scripts/reshard.ts", ...args], {
    env: { ...process.env, REDIS_NODES: twoNodes() },
    stdio: ["ignore", "pipe", "pipe"]
  })
  const lines: Array<string> = []
  const listeners: Array<(line: string) => void> = []
  for (const stream of [child.stdout!, child.stderr!]) {
    createInterface({ input: stream }).on("line", (line) => {
      lines.push(line)
      for (const l of listeners) l(line)
    })
  }
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
  const waitFor = (pattern: RegExp) =>
    new Promise<void>((resolve) => {
      if (lines.some((l) => pattern.test(l))) return resolve()
      listeners.push((line) => (pattern.test(line) ? resolve() : undefined))
    })
  return { child: child as ChildProcess, lines, exited, waitFor }
}

const startOn = (nodes: string, extra: Record<string, string> = {}) =>
  startApp({
    readyTimeoutMs: START_TIMEOUT_MS,
    env: { POLL_STAGE: "full", REDIS_NODES: nodes, FLUSH_INTERVAL_MS: "200", CACHE_TTL_MS: "300", ...extra }
  })

const movedCount = (state: Map<string, PollState>) => {
  return [...state.keys()].filter(moves).length
}
const totalVotes = (state: Map<string, PollState>, only?: (id: string) => boolean) =>
  [...state]
    .filter(([id]) => only?.(id) ?? true)
    .reduce((sum, [, s]) => sum + Object.values(s.counts).reduce((t, n) => t + Number(n), 0), 0)
function moves(id: string) {
  return Ring.nodeFor(RING2, id) !== Ring.nodeFor(RING3, id)
}

beforeAll(async () => {
  const app = await startOn(twoNodes())
  const ids = Array.from({ length: POLLS }, (_, i) => i)
  await inBatches(ids, 20, async (i) => {
    const id = pollIdOf(i)
    const kind = kindOf(i)
    if (kind !== "adhoc") {
      const created = await post(app, "/api/v1/polls", {
        id,
        question: `Question ${i}?`,
        options: [
          { id: "A", label: "Option A" },
          { id: "B", label: "Option B" }
        ],
        one_vote_per_voter: kind === "voters" || (kind === "closed" && i % 2 === 0)
      })
      expect(created.status, created.text).toBe(201)
      organiserKeys.set(id, created.json.organiser_key)
    }
    for (const [k, option] of votesOf(i).entries()) {
      const body =
        kind === "voters" || (kind === "closed" && i % 2 === 0)
          ? { option_id: option, voter_id: voterOf(i, k) }
          : { option_id: option }
      const voted = await post(app, `/api/v1/vote/${id}`, body)
      expect(voted.status, voted.text).toBe(200)
    }
    if (kind === "closed") {
      const closed = await post(app, `/api/v1/polls/${id}/close`, undefined, {
        authorization: `Bearer ${organiserKeys.get(id)}`
      })
      expect(closed.status, closed.text).toBe(200)
    }
  })
  expect(await app.stop()).toBe(0)

  const reader = await startOn(twoNodes())
  await inBatches(ids, 20, async (i) => {
    const id = pollIdOf(i)
    const results = await reader.results(id)
    expect(results.status).toBe(200)
    const definition = kindOf(i) === "adhoc" ? undefined : (await reader.request("GET", `/api/v1/polls/${id}`)).json
    expected.set(id, { results: results.json.results, definition })
  })
  expect(await reader.stop()).toBe(0)
  seeded = { node_a: await snapshot(raw.node_a!), node_b: await snapshot(raw.node_b!) }
  seededState = await stateOn(NAMES2)
  expect(seededState.size).toBe(POLLS)
}, 180_000)

/** Every page of the listing. */
const listing = async (app: App) => {
  const ids: Array<string> = []
  let cursor: string | null = null
  do {
    const reply = await app.request("GET", `/api/v1/polls?limit=100${cursor === null ? "" : `&cursor=${cursor}`}`)
    expect(reply.status, reply.text).toBe(200)
    ids.push(...reply.json.polls.map((p: { id: string }) => p.id))
    cursor = reply.json.next_cursor
  } while (cursor !== null)
  return ids
}

/** The app on three shards serves every poll as before the move: counts, definition, voters, closing, listing. */
const checkServed = async (app: App) => {
  const listed = await listing(app)
  expect(listed.length).toBe(new Set(listed).size)
  expect(new Set(listed)).toEqual(
    new Set([...expected].filter(([, e]) => e.definition !== undefined).map(([id]) => id))
  )
  const ring = RING3
  await inBatches([...expected], 20, async ([id, e]) => {
    const results = await app.results(id)
    expect({ id, results: results.json.results, via: results.json.served_via }).toEqual({
      id,
      results: e.results,
      via: Ring.nodeFor(ring, id)
    })
    if (e.definition !== undefined) expect((await app.request("GET", `/api/v1/polls/${id}`)).json).toEqual(e.definition)
  })
  // Voters who voted cannot vote again; a closed poll stays closed; an open one closes with its organiser key.
  const movedPolls = Array.from({ length: POLLS }, (_, i) => i).filter((i) => moves(pollIdOf(i)))
  await inBatches(movedPolls, 20, async (i) => {
    const id = pollIdOf(i)
    if (kindOf(i) === "voters") {
      const again = await post(app, `/api/v1/vote/${id}`, { option_id: "A", voter_id: voterOf(i, 0) })
      expect({ id, status: again.status, error: again.json.error }).toEqual({
        id,
        status: 409,
        error: "already_voted"
      })
      expect((await post(app, `/api/v1/vote/${id}`, { option_id: "A", voter_id: "newcomer" })).status).toBe(200)
    } else if (kindOf(i) === "closed") {
      const late = await post(app, `/api/v1/vote/${id}`, { option_id: "A" })
      expect({ id, status: late.status, error: late.json.error }).toEqual({ id, status: 409, error: "poll_closed" })
    } else if (kindOf(i) === "defined") {
      const path = `/api/v1/polls/${id}/close`
      expect((await post(app, path, undefined, { authorization: "Bearer wrong" })).status).toBe(403)
      const closed = await post(app, path, undefined, { authorization: `Bearer ${organiserKeys.get(id)}` })
      expect(closed.status, closed.text).toBe(200)
    }
  })

  // While an instance is connected, the reshard refuses to run.
  const refused = await reshard()
  expect(refused.exit._tag).toBe("Failure")
  expect(JSON.stringify(refused.exit)).toMatch(/app instances are connected to node node_a/)
}

describe("npm run reshard", () => {
  it("plans with --dry-run and changes nothing", async () => {
    await seed()
    const before = await Promise.all(NAMES3.map((n) => snapshot(raw[n]!)))
    const { report, lines } = await reshard({ dryRun: true })
    expect(report!.plan.moves.length).toBe(movedCount(seededState))
    expect(report!.plan.moves.every((m) => m.to === "node_c")).toBe(true)
    expect(report!.polls).toBe(0)
    expect(lines).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^node node_a: \d+ polls, \d+ move: \d+ to node_c$/),
        expect.stringMatching(/^node node_b: \d+ polls, \d+ move: \d+ to node_c$/),
        "node node_c: 0 polls, none move",
        `dry run: ${movedCount(seededState)} polls would move`
      ])
    )
    expect(await Promise.all(NAMES3.map((n) => snapshot(raw[n]!)))).toEqual(before)
  })

  it("moves every poll whose owner changes, and the app on three shards serves each exactly as before", async () => {
    await seed()
    const run = cli(["--to", threeNodes()])
    expect(await run.exited, run.lines.join("\n")).toBe(0)
    const moved = movedCount(seededState)
    expect(run.lines).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^node node_a: \d+ polls, \d+ move: \d+ to node_c$/),
        expect.stringMatching(
          new RegExp(`^moved ${moved} polls: \\d+ keys, ${totalVotes(seededState, moves)} votes, \\d+ voters$`)
        )
      ])
    )
    expect(await stateOn(NAMES3)).toEqual(seededState)

    const app = await startOn(threeNodes())
    let stopped: number | null
    try {
      await checkServed(app)
    } finally {
      stopped = await app.stop()
    }
    expect(stopped).toBe(0)

    // Run again: nothing is left to move.
    const again = await reshard()
    expect(again.report!.plan.moves.length).toBe(0)
    expect(again.report!.polls).toBe(0)
  }, 120_000)

  for (const step of Reshard.STEPS) {
    it(`finishes exact when a run stops after "${step}" of a poll's move and runs again`, async () => {
      await seed()
      let seen = 0
      const first = await reshard({
        afterStep: (_, s) =>
          s === step && ++seen === 17 ? Effect.fail(new Reshard.ReshardError({ message: "injected" })) : Effect.void
      })
      expect(first.exit._tag).toBe("Failure")
      // Interrupted: the data stands part-way, some polls still on their old node.
      const second = await reshard()
      expect(second.report!.plan.moves.length).toBeGreaterThan(0)
      expect(second.report!.plan.moves.length).toBeLessThan(movedCount(seededState))
      if (step === "freeze" || step === "copy voters") {
        expect(second.report!.plan.moves.filter((m) => m.resumed).length).toBeGreaterThan(0)
      }
      expect(await stateOn(NAMES3)).toEqual(seededState)
      const third = await reshard()
      expect(third.report!.plan.moves.length).toBe(0)
    })
  }

  it("refuses bad arguments, and a node that the two lists give different URLs, before it touches anything", async () => {
    await seed()
    const before = await Promise.all(NAMES3.map((n) => snapshot(raw[n]!)))
    const missing = cli([])
    expect(await missing.exited).toBe(1)
    expect(missing.lines.join("\n")).toMatch(/--to is missing\nusage: npm run reshard/)
    const clash = cli(["--to", `node_a=${servers.node_c!.url},node_b=${servers.node_b!.url}`])
    expect(await clash.exited).toBe(1)
    expect(clash.lines.join("\n")).toMatch(/node node_a is redis:\/\/127\.0\.0\.1:\d+ in one list and .* in the other/)
    expect(await Promise.all(NAMES3.map((n) => snapshot(raw[n]!)))).toEqual(before)
  })

  it("moves the polls back when the third shard is taken out again", async () => {
    await seed()
    expect((await reshard()).report!.polls).toBe(movedCount(seededState))
    const back = await reshard({ from: nodesOf(threeNodes()), to: nodesOf(twoNodes()) })
    expect(back.report!.polls).toBe(movedCount(seededState))
    expect(back.report!.plan.moves.every((m) => m.from === "node_c")).toBe(true)
    expect(await stateOn(NAMES2)).toEqual(seededState)
    // Nothing is left on the third shard but the tombstones of the polls that went back, and the markers of their
    // merges, which expire.
    const left = await raw.node_c!.keys("*")
    expect(left.filter((key) => key.endsWith(":moved")).length).toBe(movedCount(seededState))
    const markers = left.filter((key) => !key.endsWith(":moved"))
    expect(markers.length).toBe(movedCount(seededState))
    for (const key of markers) {
      expect(key).toMatch(/^poll:\{[^}]+\}:merged:/)
      expect(await raw.node_c!.ttl(key)).toBeGreaterThan(0)
    }
    // And out once more: each move has its own id, so the earlier marker does not hold back the new merge.
    expect((await reshard()).report!.polls).toBe(movedCount(seededState))
    expect(await stateOn(NAMES3)).toEqual(seededState)
  })

  it("finishes exact when an interrupted run is followed by one back to the old ring", async () => {
    await seed()
    let seen = 0
    const first = await reshard({
      afterStep: (_, s) =>
        s === "copy voters" && ++seen === 30
          ? Effect.fail(new Reshard.ReshardError({ message: "injected" }))
          : Effect.void
    })
    expect(first.exit._tag).toBe("Failure")
    // The operator changes their mind: REDIS_NODES names all three nodes, --to the first two.
    const back = await reshard({ from: nodesOf(threeNodes()), to: nodesOf(twoNodes()) })
    expect(back.lines).toEqual(
      expect.arrayContaining([
        expect.stringMatching(
          /^poll \S+ was frozen on node_[ab] by a run bound for node_c: it goes there, then on to node_[ab]$/
        )
      ])
    )
    expect(await stateOn(NAMES2)).toEqual(seededState)
    expect((await reshard({ from: nodesOf(threeNodes()), to: nodesOf(twoNodes()) })).report!.plan.moves.length).toBe(0)
  })

  it("finishes exact when the process is killed mid-run and run again", async () => {
    await seed()
    // Enough ad-hoc polls that the run is still going when it is killed.
    const extra = new Map<string, number>()
    const pipeline = { node_a: raw.node_a!.pipeline(), node_b: raw.node_b!.pipeline() }
    const ring = RING2
    for (let i = 0; i < 3000; i++) {
      const id = `k-${i}`
      extra.set(id, 1 + (i % 7))
      pipeline[Ring.nodeFor(ring, id) as "node_a" | "node_b"].hset(`poll:{${id}}:counts`, "A", 1 + (i % 7))
    }
    await Promise.all([pipeline.node_a.exec(), pipeline.node_b.exec()])
    const before = await stateOn(NAMES2)

    const killed = cli(["--to", threeNodes()])
    await killed.waitFor(/^moved 50 polls so far$/)
    killed.child.kill("SIGKILL")
    await killed.exited
    expect(killed.lines.some((l) => /^moved \d+ polls:/.test(l))).toBe(false)

    const rerun = cli(["--to", threeNodes()])
    expect(await rerun.exited, rerun.lines.join("\n")).toBe(0)
    const summary = rerun.lines.find((l) => /^moved \d+ polls:/.test(l))!
    const total = movedCount(before)
    const movedAgain = Number(/^moved (\d+)/.exec(summary)![1])
    expect(movedAgain).toBeGreaterThan(0)
    expect(movedAgain).toBeLessThanOrEqual(total - 50)
    expect(await stateOn(NAMES3)).toEqual(before)
  }, 60_000)
})
