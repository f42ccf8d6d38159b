import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Ring from "../../src/Ring.js"
import { type App, killAllApps, type Reply, startApp } from "../support/app.js"
import { type RedisServer, startRedis } from "../support/redis.js"
import { eventually, sleep } from "../support/wait.js"

/** Defined polls over real app processes and real redis-server: definitions, closing, one vote per voter. */

const FLUSH_MS = 200

/** Every app starts at once; on a busy 2-core machine that takes a while. */
const START_TIMEOUT_MS = 90_000

let first: RedisServer
let second: RedisServer
/** Per stage, the app processes that serve it; every stage but `memory` has two sharing the same Redis. */
const stages: Record<string, ReadonlyArray<App>> = {}

beforeAll(async () => {
  ;[first, second] = await Promise.all([startRedis(), startRedis()])
  const single = { REDIS_URL: first.url }
  const nodes = { REDIS_NODES: `node_a=${first.url},node_b=${second.url}` }
  const env: Record<string, Record<string, string>> = {
    redis: { POLL_STAGE: "redis", ...single },
    batched: { POLL_STAGE: "batched", ...single, FLUSH_INTERVAL_MS: String(FLUSH_MS) },
    sharded: { POLL_STAGE: "sharded", ...nodes },
    full: { POLL_STAGE: "full", ...nodes, FLUSH_INTERVAL_MS: String(FLUSH_MS), CACHE_TTL_MS: "300" }
  }
  const started = await Promise.all([
    startApp({ readyTimeoutMs: START_TIMEOUT_MS, env: { POLL_STAGE: "memory" } }).then(
      (app) => ["memory", [app]] as const
    ),
    ...Object.entries(env).map(
      async ([stage, e]) =>
        [
          stage,
          await Promise.all([
            startApp({ readyTimeoutMs: START_TIMEOUT_MS, env: e }),
            startApp({ readyTimeoutMs: START_TIMEOUT_MS, env: e })
          ])
        ] as const
    )
  ])
  for (const [stage, apps] of started) stages[stage] = apps
}, START_TIMEOUT_MS + 30_000)

afterAll(async () => {
  await killAllApps()
  await Promise.all([first?.stop(), second?.stop()])
})

const json = (body: unknown) => JSON.stringify(body)
const JSON_HEADERS = { "content-type": "application/json" }

const getPoll = (app: App, pollId: string) => app.request("GET", `/api/v1/polls/${pollId}`)
/** The organiser key each poll was created with, by id: closing needs it. */
const keys = new Map<string, string>()
const create = async (app: App, body: unknown) => {
  const reply = await app.request("POST", "/api/v1/polls", json(body), JSON_HEADERS)
  if (reply.status === 201) keys.set(reply.json.id, reply.json.organiser_key)
  return reply
}
/** The definition as GET shows it: the 201 without the organiser key, which is shown once only. */
const shown = (created: Reply) => {
  const { organiser_key: _, ...definition } = created.json
  return definition
}
const closePoll = (app: App, pollId: string, key = keys.get(pollId)) =>
  app.request(
    "POST",
    `/api/v1/polls/${pollId}/close`,
    undefined,
    key === undefined ? {} : { authorization: `Bearer ${key}` }
  )

interface Voter {
  readonly id?: string
  readonly cookie?: string
}

const vote = (app: App, pollId: string, optionId: string, voter: Voter = {}) =>
  app.request(
    "POST",
    `/api/v1/vote/${pollId}`,
    json({ option_id: optionId, ...(voter.id === undefined ? {} : { voter_id: voter.id }) }),
    { ...JSON_HEADERS, ...(voter.cookie === undefined ? {} : { cookie: `voter=${voter.cookie}` }) }
  )

const expectError = (reply: Reply, status: number, error: string) => {
  expect({ status: reply.status, body: reply.json }).toEqual({
    status,
    body: { error, message: expect.stringMatching(/\S/) }
  })
}

const options = (...ids: ReadonlyArray<string>) => ids.map((id) => ({ id, label: `Option ${id}` }))

/** A question with two options, A and B; overrides merged in. */
const draft = (overrides: Record<string, unknown> = {}) => ({
  question: "Which one?",
  options: options("A", "B"),
  ...overrides
})

let unique = 0
/** Poll ids unique to this run, since the two redis-servers are shared by every stage. */
const pollId = (name: string) => `${name}-${process.pid}-${unique++}`

const total = (results: Record<string, number>) => Object.values(results).reduce((s, n) => s + n, 0)

describe("poll definitions (redis stage)", () => {
  const app = () => stages.redis![0]!
  const other = () => stages.redis![1]!

  it("creates a poll with a generated id, and one with a given id, and serves the definition from either app", async () => {
    const generated = await create(app(), draft())
    expect(generated.status).toBe(201)
    expect(generated.json).toEqual({
      id: expect.stringMatching(/^[A-Za-z0-9_.-]{1,64}$/),
      question: "Which one?",
      options: options("A", "B"),
      one_vote_per_voter: false,
      closes_at: null,
      closed: false,
      open: true,
      created_at: expect.any(String),
      organiser_key: expect.stringMatching(/^[A-Za-z0-9_-]{32}$/)
    })
    expect(Math.abs(Date.parse(generated.json.created_at) - Date.now())).toBeLessThan(60_000)
    const another = await create(app(), draft())
    expect(another.status).toBe(201)
    expect(another.json.id).not.toBe(generated.json.id)

    const id = pollId("given")
    const given = await create(app(), draft({ id, question: "Tea or coffee?", one_vote_per_voter: true }))
    expect(given.status).toBe(201)
    expect(given.json).toMatchObject({ id, question: "Tea or coffee?", one_vote_per_voter: true, open: true })

    for (const server of [app(), other()]) {
      const read = await eventually(async () => {
        const r = await getPoll(server, id)
        return r.status === 200 ? r : undefined
      })
      expect(read.json).toEqual(shown(given))
      expect((await server.request("GET", `/polls/${id}`)).json).toEqual(shown(given))
    }
    expect((await getPoll(app(), generated.json.id)).json).toEqual(shown(generated))
    expect(another.json.organiser_key).not.toBe(generated.json.organiser_key)
  })

  it.each([
    ["one option", draft({ options: options("A") })],
    ["65 options", draft({ options: options(...Array.from({ length: 65 }, (_, i) => `o${i}`)) })],
    ["duplicate option ids", draft({ options: options("A", "B", "A") })],
    ["a blank question", draft({ question: "   " })],
    ["a missing question", { options: options("A", "B") }],
    ["an option id with a space", draft({ options: options("A", "B C") })],
    ["an option id of 65 characters", draft({ options: options("A", "x".repeat(65)) })],
    ["a blank label", draft({ options: [{ id: "A", label: "" }, ...options("B")] })],
    ["a closes_at that is not a time", draft({ closes_at: "next tuesday" })],
    ["a closes_at that is a number", draft({ closes_at: 1_700_000_000 })],
    ["an invalid poll id", draft({ id: "bad id!" })],
    ["an unknown field", draft({ colour: "red" })],
    ["options that are not a list", draft({ options: "A,B" })]
  ])("refuses a definition with %s: 400 invalid_poll", async (_, body) => {
    const id = pollId("invalid")
    const reply = await create(app(), { ...body, ...("id" in body ? {} : { id }) })
    expectError(reply, 400, "invalid_poll")
    expectError(await getPoll(app(), id), 404, "poll_not_found")
  })

  it("refuses bodies that are not JSON objects", async () => {
    expectError(await app().request("POST", "/api/v1/polls", "{"), 400, "invalid_json")
    expect((await app().request("POST", "/api/v1/polls", "")).status).toBe(400)
    expectError(await app().request("POST", "/api/v1/polls", "[]"), 400, "invalid_poll")
  })

  it("accepts the bounds: 2 and 64 options", async () => {
    expect((await create(app(), draft({ options: options("A", "B") }))).status).toBe(201)
    const many = options(...Array.from({ length: 64 }, (_, i) => `o${i}`))
    const reply = await create(app(), draft({ options: many }))
    expect(reply.status).toBe(201)
    expect(reply.json.options).toEqual(many)
  })

  it("a second poll with the same id is 409 poll_exists and leaves the first untouched", async () => {
    const id = pollId("dup")
    const original = await create(app(), draft({ id }))
    expect(original.status).toBe(201)
    expectError(await create(app(), draft({ id, question: "Replaced?" })), 409, "poll_exists")
    expectError(await create(other(), draft({ id, question: "Replaced?" })), 409, "poll_exists")
    expect((await getPoll(app(), id)).json).toEqual(shown(original))
  })

  it("an unknown poll is 404 poll_not_found, also one that has ad-hoc votes", async () => {
    const id = pollId("unknown")
    expectError(await getPoll(app(), id), 404, "poll_not_found")
    expectError(await closePoll(app(), id), 404, "poll_not_found")
    expect((await vote(app(), id, "A")).status).toBe(200)
    expectError(await getPoll(app(), id), 404, "poll_not_found")
  })

  it("results of a defined poll list every option, zeros included, with labels", async () => {
    const id = pollId("results")
    const body = draft({ id, options: [...options("A", "B"), { id: "C", label: '<b>C & "c"</b>' }] })
    expect((await create(app(), body)).status).toBe(201)
    const empty = await app().results(id)
    expect(empty.status).toBe(200)
    expect(empty.json).toEqual({
      poll_id: id,
      results: { A: 0, B: 0, C: 0 },
      served_via: "redis",
      question: "Which one?",
      options: [
        { id: "A", label: "Option A", votes: 0 },
        { id: "B", label: "Option B", votes: 0 },
        { id: "C", label: '<b>C & "c"</b>', votes: 0 }
      ],
      one_vote_per_voter: false,
      closes_at: null,
      closed: false
    })
    expect((await vote(app(), id, "B")).status).toBe(200)
    expect((await vote(other(), id, "B")).status).toBe(200)
    const after = await other().results(id)
    expect(after.json.results).toEqual({ A: 0, B: 2, C: 0 })
    expect(after.json.options.map((o: { votes: number }) => o.votes)).toEqual([0, 2, 0])
  })

  it("a vote for an option the poll does not have is 422 unknown_option and is not counted", async () => {
    const id = pollId("unknown-option")
    expect((await create(app(), draft({ id }))).status).toBe(201)
    expectError(await vote(app(), id, "Z"), 422, "unknown_option")
    expectError(await vote(other(), id, "Z"), 422, "unknown_option")
    expect((await app().results(id)).json.results).toEqual({ A: 0, B: 0 })
    expect(await first.client().hexists(`poll:{${id}}:counts`, "Z")).toBe(0)
  })

  it("closing a poll refuses further votes with 409 poll_closed, on every app", async () => {
    const id = pollId("close")
    expect((await create(app(), draft({ id }))).status).toBe(201)
    expect((await vote(app(), id, "A")).status).toBe(200)
    // The other app reads the definition now, so it holds a cached copy that still says open.
    expect((await getPoll(other(), id)).json.open).toBe(true)

    const closed = await closePoll(app(), id)
    expect(closed.status).toBe(200)
    expect(closed.json).toMatchObject({ id, closed: true, open: false })
    expectError(await vote(app(), id, "B"), 409, "poll_closed")
    expect((await getPoll(app(), id)).json).toMatchObject({ closed: true, open: false })

    // Other instances may serve their cached definition briefly; they refuse once it expires.
    await eventually(async () => ((await getPoll(other(), id)).json.closed === true ? true : undefined), {
      timeoutMs: 3000,
      what: "the other app to see the poll closed"
    })
    expectError(await vote(other(), id, "B"), 409, "poll_closed")
    expect((await app().results(id)).json).toMatchObject({ results: { A: 1, B: 0 }, closed: true })
    // Closing twice is harmless.
    expect((await closePoll(other(), id)).json).toMatchObject({ closed: true })
  })

  it("closing needs the organiser key: 401 without it, 403 with another, and the store keeps only its hash", async () => {
    const id = pollId("key")
    const created = await create(app(), draft({ id }))
    const key: string = created.json.organiser_key
    const other_ = await create(app(), draft({ id: pollId("other-key") }))
    const refusedWithout = await closePoll(app(), id, "")
    expectError(refusedWithout, 401, "organiser_key_required")
    expect(refusedWithout.headers.get("www-authenticate")).toMatch(/^Bearer/)
    expectError(
      await app().request("POST", `/api/v1/polls/${id}/close`, undefined, { authorization: key }),
      401,
      "organiser_key_required"
    )
    expectError(await closePoll(app(), id, other_.json.organiser_key), 403, "wrong_organiser_key")
    expectError(await closePoll(other(), id, `${key}x`), 403, "wrong_organiser_key")
    expect((await getPoll(app(), id)).json).toMatchObject({ closed: false, open: true })
    expect((await vote(app(), id, "A")).status).toBe(200)
    // Whatever Redis holds of the poll, the key is not in it.
    const client = first.client()
    for (const name of await client.keys(`poll:{${id}}:*`)) {
      const type = await client.type(name)
      const value = type === "string" ? await client.get(name) : JSON.stringify(await client.hgetall(name))
      expect(value).not.toContain(key)
    }
    client.disconnect()
    expect(
      (await other().request("POST", `/api/v1/polls/${id}/close`, undefined, { authorization: `bearer  ${key}` })).json
    ).toMatchObject({ closed: true })
  })

  it("a poll whose definition the store lost takes no votes (503 definition_lost) until it is defined again", async () => {
    const id = pollId("lost")
    expect((await create(app(), draft({ id, one_vote_per_voter: true }))).status).toBe(201)
    expect((await vote(app(), id, "A", { id: "gus" })).status).toBe(200)
    expect((await vote(other(), id, "B", { id: "hal" })).status).toBe(200)
    // What a restore from an older snapshot, or a FLUSHALL, leaves of this poll: nothing.
    const client = first.client()
    await client.del(`poll:{${id}}:definition`, `poll:{${id}}:organiser`, `poll:{${id}}:voters`, `poll:{${id}}:counts`)
    await client.srem("livepoll:polls", id)
    client.disconnect()
    for (const server of [app(), other()]) {
      // Within the definition cache's second the old rules may still apply; never the ad-hoc ones.
      const refused = await eventually(async () => {
        const r = await vote(server, id, "A")
        expect(r.status).not.toBe(200)
        return r.status === 503 ? r : undefined
      })
      expectError(refused, 503, "definition_lost")
      expectError(await vote(server, id, "Z"), 503, "definition_lost")
      expectError(await server.results(id), 503, "definition_lost")
    }
    expect(app().output()).toMatch(new RegExp(`poll ${id} was defined, but node redis has no definition of it`))
    // Its organiser defines it again: the rules are back, everywhere.
    expect((await create(other(), draft({ id, one_vote_per_voter: true }))).status).toBe(201)
    for (const server of [app(), other()]) {
      const counted = await eventually(async () => {
        const r = await vote(server, id, "A", { id: `ivy-${server.port}` })
        return r.status === 200 ? r : undefined
      })
      expect(counted.status).toBe(200)
      expectError(await vote(server, id, "A"), 400, "voter_required")
    }
    expect((await app().results(id)).json.results).toEqual({ A: 2, B: 0 })
  })

  it("a poll whose closes_at has passed refuses votes", async () => {
    const past = pollId("past")
    const created = await create(app(), draft({ id: past, closes_at: new Date(Date.now() - 60_000).toISOString() }))
    expect(created.status).toBe(201)
    expect(created.json).toMatchObject({ closed: false, open: false })
    expectError(await vote(app(), past, "A"), 409, "poll_closed")

    const soon = pollId("soon")
    const closesAt = Date.now() + 1000
    expect((await create(app(), draft({ id: soon, closes_at: new Date(closesAt).toISOString() }))).status).toBe(201)
    expect((await vote(app(), soon, "A")).status).toBe(200)
    expect((await vote(other(), soon, "B")).status).toBe(200)
    await sleep(closesAt - Date.now() + 50)
    expectError(await vote(app(), soon, "A"), 409, "poll_closed")
    expectError(await vote(other(), soon, "A"), 409, "poll_closed")
    expect((await getPoll(app(), soon)).json).toMatchObject({ closed: false, open: false })
    expect((await app().results(soon)).json.results).toEqual({ A: 1, B: 1 })
  })

  it("ad-hoc polls are unchanged: any option, voter ids ignored, the contract's result shape", async () => {
    const id = pollId("adhoc")
    expect((await vote(app(), id, "A", { id: "same" })).json).toEqual({ poll_id: id, option_id: "A" })
    expect((await vote(app(), id, "A", { id: "same" })).status).toBe(200)
    expect((await vote(other(), id, "Z", { cookie: "same" })).status).toBe(200)
    expect((await app().results(id)).json).toEqual({ poll_id: id, results: { A: 2, Z: 1 }, served_via: "redis" })
  })

  it("a voter_id that is not a valid id is a 400", async () => {
    const id = pollId("bad-voter")
    expect((await create(app(), draft({ id, one_vote_per_voter: true }))).status).toBe(201)
    expect((await vote(app(), id, "A", { id: "has space" })).status).toBe(400)
    expect((await vote(app(), id, "A", { id: "x".repeat(129) })).status).toBe(400)
    expect((await app().results(id)).json.results).toEqual({ A: 0, B: 0 })
  })
})

/** The node of a poll in the sharded stages, so its raw hash can be read. */
const shardOf = (id: string) => (Ring.nodeFor(Ring.make(["node_a", "node_b"]), id) === "node_a" ? first : second)

const rawCounts = async (stage: string, id: string): Promise<Record<string, number> | undefined> => {
  if (stage === "memory") return undefined
  const server = stage === "sharded" || stage === "full" ? shardOf(id) : first
  const counts = await server.client().hgetall(`poll:{${id}}:counts`)
  return Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, Number(v)]))
}

describe.each(["memory", "redis", "batched", "sharded", "full"])("one vote per voter, %s stage", (stage) => {
  const apps = () => {
    const list = stages[stage]!
    return [list[0]!, list[list.length - 1]!] as const
  }
  const expected = { A: 2, B: 1 }

  it("refuses a second vote by the same voter with 409 already_voted, across app processes, and does not count it", async () => {
    const [a, b] = apps()
    const id = pollId(`voter-${stage}`)
    expect((await create(a, draft({ id, one_vote_per_voter: true }))).status).toBe(201)

    expectError(await vote(a, id, "A"), 400, "voter_required")
    expectError(await vote(b, id, "A"), 400, "voter_required")

    // By voter_id in the body.
    expect((await vote(a, id, "A", { id: "alice" })).status).toBe(200)
    expectError(await vote(b, id, "B", { id: "alice" }), 409, "already_voted")
    expectError(await vote(a, id, "A", { id: "alice" }), 409, "already_voted")

    // By the cookie the page sets.
    expect((await vote(b, id, "B", { cookie: "bob-cookie" })).status).toBe(200)
    expectError(await vote(a, id, "A", { cookie: "bob-cookie" }), 409, "already_voted")
    expectError(await vote(b, id, "B", { cookie: "bob-cookie" }), 409, "already_voted")

    // Fifty at once by one voter, spread over both processes: exactly one is counted.
    const burst = await Promise.all(
      Array.from({ length: 50 }, (_, i) => vote(i % 2 === 0 ? a : b, id, "A", { id: "carol" }))
    )
    expect(burst.filter((r) => r.status === 200)).toHaveLength(1)
    for (const r of burst.filter((r) => r.status !== 200)) expectError(r, 409, "already_voted")

    // Every app answers the same counts, once buffered votes are flushed, and so does the store.
    for (const app of new Set([a, b])) {
      await eventually(
        async () => {
          const health = await app.request("GET", "/api/v1/health")
          return health.json.pending_votes === 0 ? true : undefined
        },
        { timeoutMs: 5000, what: `${stage}: the buffer to drain` }
      )
    }
    for (const app of new Set([a, b])) {
      const results = await eventually(
        async () => {
          const r = (await app.results(id)).json.results
          return total(r) === 3 ? r : undefined
        },
        { timeoutMs: 3000, what: `${stage}: 3 votes on port ${app.port}` }
      )
      expect(results).toEqual(expected)
    }
    const raw = await rawCounts(stage, id)
    if (raw !== undefined) expect(raw).toEqual(expected)

    // Nothing more arrives later: the refused votes were never buffered.
    await sleep(FLUSH_MS * 2)
    for (const app of new Set([a, b])) expect((await app.results(id)).json.results).toEqual(expected)
  })

  it("enforces a poll created on one process at once on the other", async () => {
    const [a, b] = apps()
    // Several times: the first vote follows the 201 as closely as a client can send it.
    for (let i = 0; i < 10; i++) {
      const id = pollId(`fresh-${stage}`)
      expect((await create(a, draft({ id, one_vote_per_voter: true }))).status).toBe(201)
      expectError(await vote(b, id, "A"), 400, "voter_required")
      expect((await vote(b, id, "A", { id: "dora" })).status).toBe(200)
      expectError(await vote(a, id, "A", { id: "dora" }), 409, "already_voted")
    }
  })

  it("enforces a poll on a process that read its id before it was defined", async () => {
    const [a, b] = apps()
    const id = pollId(`early-${stage}`)
    // A page or stream opened before the organiser creates the poll: b has looked the id up and found nothing.
    expect((await b.results(id)).json.results).toEqual({})
    expect((await create(a, draft({ id, one_vote_per_voter: true }))).status).toBe(201)
    expectError(await vote(b, id, "Z", { id: "finn" }), 422, "unknown_option")
    expectError(await vote(b, id, "A"), 400, "voter_required")
    expect((await vote(b, id, "A", { id: "finn" })).status).toBe(200)
    expectError(await vote(a, id, "B", { id: "finn" }), 409, "already_voted")
    expectError(await vote(b, id, "B", { id: "finn" }), 409, "already_voted")
  })

  it("the same voter may vote once on each of two polls", async () => {
    const [a, b] = apps()
    const one = pollId(`each-${stage}`)
    const two = pollId(`each-${stage}`)
    for (const id of [one, two]) expect((await create(a, draft({ id, one_vote_per_voter: true }))).status).toBe(201)
    expect((await vote(a, one, "A", { id: "erin" })).status).toBe(200)
    expect((await vote(b, two, "B", { id: "erin" })).status).toBe(200)
  })
})

describe.each(["memory", "redis", "batched", "sharded", "full"])("listing and export, %s stage", (stage) => {
  const apps = () => {
    const list = stages[stage]!
    return [list[0]!, list[list.length - 1]!] as const
  }
  /** Every page of the listing on `app`, following next_cursor. */
  const listed = async (app: App, query: string) => {
    const polls: Array<{ id: string; open: boolean }> = []
    let cursor: string | null = null
    do {
      const reply = await app.request("GET", `/api/v1/polls?${query}${cursor === null ? "" : `&cursor=${cursor}`}`)
      expect(reply.status, reply.text).toBe(200)
      polls.push(...reply.json.polls)
      cursor = reply.json.next_cursor
    } while (cursor !== null)
    return polls
  }

  it("lists polls created on another process, newest first, each once, with open and closed apart", async () => {
    const [a, b] = apps()
    const created: Array<string> = []
    for (let i = 0; i < 4; i++) {
      const reply = await create(a, draft({ id: pollId(`listed-${stage}`) }))
      expect(reply.status).toBe(201)
      created.push(reply.json.id)
    }
    expect((await closePoll(a, created[1]!)).status).toBe(200)
    const all = await listed(b, "limit=7")
    expect(new Set(all.map((p) => p.id)).size).toBe(all.length)
    const own = all.filter((p) => created.includes(p.id))
    // Created one after the other, so newest first is the reverse (polls of one millisecond go by id, and these ids
    // end in increasing numbers of the same length only by chance: compare as the listing orders).
    const createdAt = new Map(
      await Promise.all(created.map(async (id) => [id, (await getPoll(b, id)).json.created_at as string] as const))
    )
    const expected = [...created].sort((x, y) =>
      createdAt.get(x) !== createdAt.get(y) ? (createdAt.get(x)! < createdAt.get(y)! ? 1 : -1) : x < y ? 1 : -1
    )
    expect(own.map((p) => p.id)).toEqual(expected)
    expect(own.find((p) => p.id === created[1])?.open).toBe(false)
    const open = (await listed(b, "status=open&limit=100")).map((p) => p.id)
    const closed = (await listed(b, "status=closed&limit=100")).map((p) => p.id)
    expect(expected.filter((id) => open.includes(id))).toEqual(expected.filter((id) => id !== created[1]))
    expect(expected.filter((id) => closed.includes(id))).toEqual([created[1]])
  })

  it("exports the counts this process has taken at once, and another process's once they are flushed", async () => {
    const [a, b] = apps()
    const id = pollId(`export-${stage}`)
    expect(
      (await create(a, draft({ id, options: [...options("A", "B"), { id: "-c", label: "=1+1, or not" }] }))).status
    ).toBe(201)
    for (const option of ["A", "A", "-c"]) expect((await vote(a, id, option)).status).toBe(200)
    const json = await a.request("GET", `/api/v1/polls/${id}/results.json`)
    expect(json.json).toMatchObject({
      poll_id: id,
      poll: { id, question: "Which one?", open: true },
      results: [
        { option_id: "A", label: "Option A", votes: 2 },
        { option_id: "B", label: "Option B", votes: 0 },
        { option_id: "-c", label: "=1+1, or not", votes: 1 }
      ],
      total_votes: 3,
      final: false
    })
    const csv = await a.request("GET", `/polls/${id}/results.csv`)
    expect(csv.headers.get("content-type")).toBe("text/csv; charset=utf-8")
    expect(csv.headers.get("content-disposition")).toBe(`attachment; filename="${id}-results.csv"`)
    expect(csv.text).toBe(
      "poll_id,question,option_id,label,votes\r\n" +
        `${id},Which one?,A,Option A,2\r\n${id},Which one?,B,Option B,0\r\n${id},Which one?,'-c,"'=1+1, or not",1\r\n`
    )
    // Another process sees them once they are in the store (at once, but for a buffer's flush).
    await eventually(
      async () =>
        (await b.request("GET", `/api/v1/polls/${id}/results.json`)).json.total_votes === 3 ? true : undefined,
      { timeoutMs: 5000, what: `${stage}: the other process to export 3 votes` }
    )
    expect((await closePoll(b, id)).status).toBe(200)
    expect((await a.request("GET", `/api/v1/polls/${id}/results.json`)).json).toMatchObject({
      final: true,
      poll: { closed: true, open: false }
    })
    expectError(await a.request("GET", `/api/v1/polls/${pollId("never")}/results.csv`), 404, "poll_not_found")
  })
})

describe.each(["memory", "redis"])("MAX_POLLS, %s stage", (stage) => {
  it("refuses a definition past MAX_POLLS with 409 too_many_polls, and keeps the ones it holds", async () => {
    const redis = stage === "redis" ? await startRedis() : undefined
    try {
      const app = await startApp({
        env: { POLL_STAGE: stage, MAX_POLLS: "2", ...(redis === undefined ? {} : { REDIS_URL: redis.url }) }
      })
      const ids = [pollId("cap"), pollId("cap"), pollId("cap")]
      expect((await create(app, draft({ id: ids[0] }))).status).toBe(201)
      expect((await create(app, draft({ id: ids[1] }))).status).toBe(201)
      expectError(await create(app, draft({ id: ids[2] })), 409, "too_many_polls")
      expectError(await getPoll(app, ids[2]!), 404, "poll_not_found")
      expect((await getPoll(app, ids[1]!)).status).toBe(200)
      // A taken id is still a taken id, not a full store.
      expectError(await create(app, draft({ id: ids[0] })), 409, "poll_exists")
      await app.stop()
    } finally {
      await redis?.stop()
    }
  })
})
