import { describe, expect, it } from "vitest"
import type { Stage } from "../../src/Config.js"
import * as Ring from "../../src/Ring.js"
import { csvCell } from "../../src/Http/Export.js"
import { freePort } from "../support/redis.js"
import { expectError, serveOnTwoNodes, startStage } from "../support/stage.js"

/**
 * `GET /polls/{id}/results.json` and `.csv` over every stage's composition, in this process, on two real
 * redis-servers. The buffer flushes only when a stage closes and the read cache outlives the tests: an export that
 * shows a vote Redis does not hold yet, or that a cached read does not show yet, read the counts exactly.
 */

const STAGES: ReadonlyArray<Stage> = ["memory", "redis", "cached", "batched", "sharded", "full"]
const BUFFERED = new Set<Stage>(["batched", "full"])
const CACHED = new Set<Stage>(["cached", "full"])

const stages = serveOnTwoNodes(STAGES, (first, second) => ({
  REDIS_URL: first.url,
  REDIS_NODES: `node_a=${first.url},node_b=${second.url}`,
  FLUSH_INTERVAL_MS: "600000",
  CACHE_TTL_MS: "600000"
}))

let unique = 0
const pollId = (name: string) => `${name}-${process.pid}-${unique++}`

/** The Redis hash of a poll's counts, on the node the stage keeps it. */
const stored = async (stage: Stage, id: string) => {
  const sharded = stage === "sharded" || stage === "full"
  const node =
    sharded && Ring.nodeFor(Ring.make(["node_a", "node_b"]), id) === "node_b" ? stages.second() : stages.first()
  return node.client().hgetall(`poll:{${id}}:counts`)
}

describe.each(STAGES)("exports, %s stage", (stage) => {
  const app = () => stages.app(stage)
  const vote = async (id: string, option: string) => {
    const reply = await app().request("POST", `/api/v1/vote/${id}`, JSON.stringify({ option_id: option }))
    expect(reply.status, reply.text).toBe(200)
  }
  const create = async (body: Record<string, unknown>) => {
    const reply = await app().request("POST", "/api/v1/polls", JSON.stringify(body))
    expect(reply.status, reply.text).toBe(201)
    const { organiser_key, ...poll } = reply.json
    return { poll, key: organiser_key as string }
  }
  const options = [
    { id: "A", label: "Apples" },
    { id: "B", label: "Bananas" },
    { id: "C", label: "Cherries" }
  ]

  it("results.json: the definition, every option in its order with zeros, the counts read exactly", async () => {
    const id = pollId(`json-${stage}`)
    const { poll } = await create({ id, question: "Which fruit?", options })
    // Read once before the votes: a cached stage keeps this snapshot of no votes.
    expect((await app().request("GET", `/api/v1/results/${id}`)).json.results).toEqual({ A: 0, B: 0, C: 0 })
    for (const option of ["B", "A", "B"]) await vote(id, option)

    const reply = await app().request("GET", `/api/v1/polls/${id}/results.json`)
    expect(reply.status).toBe(200)
    expect(reply.headers.get("content-type")).toBe("application/json")
    expect(reply.json).toEqual({
      poll_id: id,
      poll: { ...poll, open: true },
      results: [
        { option_id: "A", label: "Apples", votes: 1 },
        { option_id: "B", label: "Bananas", votes: 2 },
        { option_id: "C", label: "Cherries", votes: 0 }
      ],
      total_votes: 3,
      final: false,
      exported_at: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
    })
    expect(Math.abs(Date.parse(reply.json.exported_at) - Date.now())).toBeLessThan(60_000)
    // Exact where a plain read is not: the cached stage still answers its snapshot, a buffered one has not flushed.
    const read = (await app().request("GET", `/api/v1/results/${id}`)).json
    if (stage === "cached") expect(read).toMatchObject({ results: { A: 0, B: 0, C: 0 }, served_via: "app_cache" })
    if (CACHED.has(stage) && stage !== "cached") expect(read.served_via).toBe("app_cache")
    if (BUFFERED.has(stage)) expect(await stored(stage, id)).toEqual({})
    if (stage !== "memory" && !BUFFERED.has(stage)) expect(await stored(stage, id)).toEqual({ A: "1", B: "2" })
  })

  it("a closed poll's export is final, and so is one past its closes_at", async () => {
    const id = pollId(`final-${stage}`)
    const { key } = await create({ id, question: "Done?", options })
    await vote(id, "C")
    const open = await app().request("GET", `/api/v1/polls/${id}/results.json`)
    expect(open.json).toMatchObject({ final: false, poll: { open: true, closed: false } })
    const closed = await app().request("POST", `/api/v1/polls/${id}/close`, "", { authorization: `Bearer ${key}` })
    expect(closed.status).toBe(200)
    const after = await app().request("GET", `/api/v1/polls/${id}/results.json`)
    expect(after.json).toMatchObject({
      final: true,
      total_votes: 1,
      poll: { id, open: false, closed: true },
      results: [
        { option_id: "A", votes: 0 },
        { option_id: "B", votes: 0 },
        { option_id: "C", votes: 1 }
      ]
    })

    const past = pollId(`past-${stage}`)
    await create({ id: past, question: "Over?", options, closes_at: new Date(Date.now() - 1000).toISOString() })
    expect((await app().request("GET", `/api/v1/polls/${past}/results.json`)).json).toMatchObject({
      final: true,
      total_votes: 0,
      poll: { open: false, closed: false }
    })
  })

  it("an ad-hoc poll: no definition, what was voted for sorted by id, empty labels, never final", async () => {
    const id = pollId(`adhoc-${stage}`)
    for (const option of ["b", "__proto__", "a", "B", "b", "constructor"]) await vote(id, option)
    const json = await app().request("GET", `/api/v1/polls/${id}/results.json`)
    expect(json.json).toEqual({
      poll_id: id,
      poll: null,
      results: [
        { option_id: "B", label: "", votes: 1 },
        { option_id: "__proto__", label: "", votes: 1 },
        { option_id: "a", label: "", votes: 1 },
        { option_id: "b", label: "", votes: 2 },
        { option_id: "constructor", label: "", votes: 1 }
      ],
      total_votes: 6,
      final: false,
      exported_at: expect.any(String)
    })
    const csv = await app().request("GET", `/api/v1/polls/${id}/results.csv`)
    expect(csv.text).toBe(
      "poll_id,question,option_id,label,votes\r\n" +
        `${id},,B,,1\r\n${id},,__proto__,,1\r\n${id},,a,,1\r\n${id},,b,,2\r\n${id},,constructor,,1\r\n`
    )
    if (BUFFERED.has(stage)) expect(await stored(stage, id)).toEqual({})
  })

  if (stage === "memory") {
    it("ids that spell Object.prototype members are polls like any other", async () => {
      for (const id of ["__proto__", "constructor", "hasOwnProperty"]) {
        expectError(await app().request("GET", `/api/v1/polls/${id}/results.json`), 404, "poll_not_found")
        await vote(id, "toString")
        const reply = await app().request("GET", `/api/v1/polls/${id}/results.json`)
        expect(reply.json).toMatchObject({ poll_id: id, poll: null, results: [{ option_id: "toString", votes: 1 }] })
        expect((await app().request("GET", `/api/v1/polls/${id}/results.csv`)).text).toBe(
          `poll_id,question,option_id,label,votes\r\n${id},,toString,,1\r\n`
        )
      }
    })
  }

  it("a poll never defined and never voted on is 404 poll_not_found; an invalid id is 400 invalid_poll_id", async () => {
    const id = pollId(`none-${stage}`)
    for (const ext of ["json", "csv"]) {
      expectError(await app().request("GET", `/api/v1/polls/${id}/results.${ext}`), 404, "poll_not_found")
      expectError(await app().request("GET", `/polls/${id}/results.${ext}`), 404, "poll_not_found")
      expectError(await app().request("GET", `/api/v1/polls/bad%20id/results.${ext}`), 400, "invalid_poll_id")
      expectError(await app().request("GET", `/api/v1/polls/${"x".repeat(65)}/results.${ext}`), 400, "invalid_poll_id")
      expectError(await app().request("GET", `/api/v1/polls/%zz/results.${ext}`), 400, "invalid_poll_id")
      expectError(await app().request("POST", `/api/v1/polls/${id}/results.${ext}`, "{}"), 405, "method_not_allowed")
    }
    // The lookup counted nothing and defined nothing.
    expectError(await app().request("GET", `/api/v1/polls/${id}/results.json`), 404, "poll_not_found")
    expect((await app().request("GET", `/api/v1/results/${id}`)).json.results).toEqual({})
  })

  it("results.csv: an attachment, one row per option with the question on each, quoted and formula-safe", async () => {
    const id = pollId(`csv-${stage}`)
    await create({
      id,
      question: '=HYPERLINK("http://x", "Which, one?")',
      options: [
        { id: "plain", label: "Plain text" },
        { id: "-minus", label: "-1+2" },
        { id: "plus", label: "+SUM(A1:A2)" },
        { id: "at", label: "@cmd" },
        { id: "tab", label: "\tlead" },
        { id: "cr", label: "\rlead" },
        { id: "quotes", label: 'say "hi", then\nleave' },
        { id: "inner", label: "a=b and c-d" },
        { id: "uni", label: "café ✓" }
      ]
    })
    await vote(id, "quotes")
    await vote(id, "-minus")
    const reply = await app().request("GET", `/api/v1/polls/${id}/results.csv`)
    expect(reply.status).toBe(200)
    expect(reply.headers.get("content-type")).toBe("text/csv; charset=utf-8")
    expect(reply.headers.get("content-disposition")).toBe(`attachment; filename="${id}-results.csv"`)
    expect(reply.headers.get("x-content-type-options")).toBe("nosniff")
    const q = `"'=HYPERLINK(""http://x"", ""Which, one?"")"`
    expect(reply.text).toBe(
      [
        "poll_id,question,option_id,label,votes",
        `${id},${q},plain,Plain text,0`,
        `${id},${q},'-minus,'-1+2,1`,
        `${id},${q},plus,'+SUM(A1:A2),0`,
        `${id},${q},at,'@cmd,0`,
        `${id},${q},tab,'\tlead,0`,
        `${id},${q},cr,"'\rlead",0`,
        `${id},${q},quotes,"say ""hi"", then\nleave",1`,
        `${id},${q},inner,a=b and c-d,0`,
        `${id},${q},uni,café ✓,0`,
        ""
      ].join("\r\n")
    )
    expect(Number(reply.headers.get("content-length"))).toBe(Buffer.byteLength(reply.text))

    // HEAD: the same head, no body.
    const head = await fetch(`${app().baseUrl}/api/v1/polls/${id}/results.csv`, { method: "HEAD" })
    expect(head.status).toBe(200)
    expect(head.headers.get("content-disposition")).toBe(`attachment; filename="${id}-results.csv"`)
    expect(head.headers.get("content-length")).toBe(reply.headers.get("content-length"))
    expect(await head.text()).toBe("")
  })
})

describe("csvCell", () => {
  it.each([
    ["plain", "plain"],
    ["", ""],
    ["=1+1", "'=1+1"],
    ["+1", "'+1"],
    ["-1", "'-1"],
    ["@x", "'@x"],
    ["\tx", "'\tx"],
    ["\rx", `"'\rx"`],
    ["a,b", `"a,b"`],
    ['a"b', `"a""b"`],
    ["a\nb", `"a\nb"`],
    ["=a,b", `"'=a,b"`],
    [" =1", " =1"],
    ["1-1", "1-1"]
  ])("%j is written %j", (text, cell) => {
    expect(csvCell(text)).toBe(cell)
  })
})

describe("exports with the store down", () => {
  it("answer 503 store_unavailable, as listing does", async () => {
    // A port nothing listens on: the stage starts anyway and its reads fail fast.
    const down = await startStage("redis", { REDIS_URL: `redis://127.0.0.1:${await freePort()}` })
    try {
      for (const path of ["/api/v1/polls/p-down/results.json", "/api/v1/polls/p-down/results.csv", "/api/v1/polls"]) {
        expectError(await down.request("GET", path), 503, "store_unavailable")
      }
    } finally {
      await down.close()
    }
  }, 30_000)
})
