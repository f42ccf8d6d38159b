import { describe, expect, it } from "vitest"
import type { Stage } from "../../src/Config.js"
import { CREATED_KEY } from "../../src/Polls/Redis.js"
import { expectError, serveOnTwoNodes } from "../support/stage.js"

/**
 * `GET /polls`: the defined polls a page at a time, over the memory stage and the sharded one (two real
 * redis-servers, so every page is merged from both), each served in this process.
 */

const STAGES: ReadonlyArray<Stage> = ["memory", "sharded"]

const stages = serveOnTwoNodes(STAGES, (first, second) => ({ REDIS_NODES: `node_a=${first.url},node_b=${second.url}` }))

let unique = 0
const pollId = (name: string) => `${name}-${process.pid}-${unique++}`

interface Shown {
  readonly id: string
  readonly created_at: string
  readonly open: boolean
}

/** The listing's order: newest first, then by id, descending. */
const newestFirst = (polls: ReadonlyArray<Shown>) =>
  [...polls]
    .sort((a, b) =>
      a.created_at !== b.created_at ? (a.created_at < b.created_at ? 1 : -1) : a.id < b.id ? 1 : a.id > b.id ? -1 : 0
    )
    .map((p) => p.id)

describe.each(STAGES)("listing, %s stage", (stage) => {
  const app = () => stages.app(stage)
  const keys = new Map<string, string>()
  const create = async (name: string, extra: Record<string, unknown> = {}): Promise<Shown> => {
    const body = {
      id: pollId(name),
      question: "Which?",
      options: [
        { id: "A", label: "A" },
        { id: "B", label: "B" }
      ]
    }
    const reply = await app().request("POST", "/api/v1/polls", JSON.stringify({ ...body, ...extra }))
    expect(reply.status, reply.text).toBe(201)
    const { organiser_key, ...poll } = reply.json
    keys.set(poll.id, organiser_key)
    return poll
  }
  const list = (query = "") => app().request("GET", `/api/v1/polls${query}`)
  /** Every page from the first, following next_cursor. */
  const walk = async (query: string) => {
    const pages: Array<{ polls: Array<Shown>; next_cursor: string | null }> = []
    let cursor: string | null = null
    do {
      const reply = await list(`?${query}${cursor === null ? "" : `&cursor=${encodeURIComponent(cursor)}`}`)
      expect(reply.status, reply.text).toBe(200)
      pages.push(reply.json)
      cursor = reply.json.next_cursor
    } while (cursor !== null && pages.length < 500)
    return pages
  }
  const ids = (pages: ReadonlyArray<{ polls: ReadonlyArray<Shown> }>) => pages.flatMap((p) => p.polls.map((q) => q.id))
  const mine = (all: ReadonlyArray<string>, own: ReadonlyArray<Shown>) =>
    all.filter((id) => own.some((p) => p.id === id))

  it("pages newest first, each poll as GET /polls/{id} answers it, to a null next_cursor", async () => {
    const own: Array<Shown> = []
    for (let i = 0; i < 7; i++) own.push(await create("page"))
    const first = await list("?limit=3")
    expect(first.status).toBe(200)
    expect(first.headers.get("content-type")).toBe("application/json")
    expect(Object.keys(first.json).sort()).toEqual(["next_cursor", "polls"])
    expect(first.json.polls).toHaveLength(3)
    expect(first.json.next_cursor).toEqual(expect.stringMatching(/^[A-Za-z0-9_-]+$/))
    for (const poll of first.json.polls) {
      expect(poll).toEqual((await app().request("GET", `/api/v1/polls/${poll.id}`)).json)
    }
    const pages = await walk("limit=3")
    expect(pages.slice(0, -1).every((p) => p.polls.length === 3 && p.next_cursor !== null)).toBe(true)
    expect(pages.at(-1)!.next_cursor).toBeNull()
    const all = ids(pages)
    expect(new Set(all).size).toBe(all.length)
    expect(newestFirst(pages.flatMap((p) => p.polls))).toEqual(all)
    expect(mine(all, own)).toEqual(newestFirst(own))
    // The defaults: all polls, 20 to a page; bare and under /api/v1 alike.
    const defaults = await list()
    expect(defaults.json.polls).toEqual(pages.flatMap((p) => p.polls).slice(0, 20))
    expect((await app().request("GET", "/polls")).json).toEqual(defaults.json)
    expect((await list("?status=all&limit=20")).json).toEqual(defaults.json)
    const head = await fetch(`${app().baseUrl}/api/v1/polls?limit=3`, { method: "HEAD" })
    expect(head.status).toBe(200)
    expect(await head.text()).toBe("")
  })

  it("a cursor holds its place while polls are created between pages", async () => {
    const before: Array<Shown> = []
    for (let i = 0; i < 6; i++) before.push(await create("stable"))
    const page = await list("?limit=2")
    const seen: Array<string> = page.json.polls.map((p: Shown) => p.id)
    let cursor: string | null = page.json.next_cursor
    const added: Array<Shown> = []
    while (cursor !== null) {
      added.push(await create("between"), await create("between"))
      const next = await list(`?limit=2&cursor=${cursor}`)
      expect(next.status).toBe(200)
      seen.push(...next.json.polls.map((p: Shown) => p.id))
      cursor = next.json.next_cursor
    }
    // Every poll there when the first page was read, once; none twice; the new ones are above the first page.
    for (const poll of before) expect(seen.filter((id) => id === poll.id)).toHaveLength(1)
    expect(new Set(seen).size).toBe(seen.length)
    expect(mine(seen, before)).toEqual(newestFirst(before))
    expect(mine(seen, added).length).toBeLessThan(added.length)
  })

  it("status=open and status=closed split the polls by whether they take votes now", async () => {
    const open = await create("open")
    const closed = await create("closed")
    const past = await create("past", { closes_at: new Date(Date.now() - 1000).toISOString() })
    const later = await create("later", { closes_at: new Date(Date.now() + 3_600_000).toISOString() })
    const authorization = `Bearer ${keys.get(closed.id)}`
    expect((await app().request("POST", `/api/v1/polls/${closed.id}/close`, "", { authorization })).status).toBe(200)
    const own = [open, closed, past, later]
    const openPages = await walk("status=open&limit=100")
    expect(mine(ids(openPages), own)).toEqual(newestFirst([open, later]))
    expect(openPages.flatMap((p) => p.polls).every((p) => p.open)).toBe(true)
    const closedPages = await walk("status=closed&limit=100")
    expect(mine(ids(closedPages), own)).toEqual(newestFirst([closed, past]))
    expect(closedPages.flatMap((p) => p.polls).every((p) => !p.open)).toBe(true)
    expect(mine(ids(await walk("status=all&limit=100")), own)).toEqual(newestFirst(own))
  })

  it("limit is 1 to 100", async () => {
    for (let i = 0; i < 101; i++) await create("many")
    expect((await list("?limit=1")).json.polls).toHaveLength(1)
    const hundred = await list("?limit=100")
    expect(hundred.json.polls).toHaveLength(100)
    expect(hundred.json.next_cursor).not.toBeNull()
    expect((await list("?limit=%31%30")).json.polls).toHaveLength(10)
  })

  it.each([
    ["limit=0", "limit"],
    ["limit=101", "limit"],
    ["limit=abc", "limit"],
    ["limit=", "limit"],
    ["limit=1.5", "limit"],
    ["limit=-1", "limit"],
    ["limit=05", "limit"],
    ["limit=1e1", "limit"],
    ["limit=0x10", "limit"],
    ["limit=%205", "limit"],
    ["limit=%zz", "limit"],
    ["status=x", "status"],
    ["status=OPEN", "status"],
    ["status=", "status"],
    ["status=%E2%80%AE", "status"],
    ["cursor=", "cursor"],
    ["cursor=not-a-cursor", "cursor"],
    ["cursor=%00", "cursor"],
    [`cursor=${Buffer.from("123:bad id").toString("base64url")}`, "cursor"],
    [`cursor=${Buffer.from("-1:p").toString("base64url")}`, "cursor"],
    [`cursor=${Buffer.from("99999999999999999:p").toString("base64url")}`, "cursor"],
    [`cursor=${Buffer.from("1:p").toString("base64url")}==`, "cursor"],
    [`cursor=${"A".repeat(5000)}`, "cursor"],
    ["limit=1&limit=2", "limit"],
    ["status=open&status=open", "status"],
    ["cursor=a&cursor=b", "cursor"],
    ["limit=0&status=x", "status"]
  ])("?%s is 400 invalid_request naming %s", async (query, name) => {
    const reply = await list(`?${query}`)
    expectError(reply, 400, "invalid_request")
    expect(reply.json.message).toContain(name)
    expect(reply.json.message.length).toBeLessThanOrEqual(300)
  })

  it("says which parameter is wrong and why", async () => {
    const message = async (query: string) => (await list(query)).json.message
    expect(await message("?limit=0")).toBe("limit must be a whole number from 1 to 100")
    expect(await message("?status=x")).toBe("status must be open, closed or all")
    expect(await message("?cursor=zz")).toBe("cursor is not a next_cursor this server gave out")
    expect(await message("?limit=1&limit=2")).toBe("limit is given 2 times; give it once")
    expect(await message("?limit=0&status=x")).toBe(
      "status must be open, closed or all; limit must be a whole number from 1 to 100"
    )
  })

  it("ignores unknown parameters, and hostile query strings are answered, never a crash", async () => {
    await create("hostile")
    const ok = await list("?limit=2&__proto__=x&constructor=y&toString=z&hasOwnProperty=1&foo")
    expect(ok.status).toBe(200)
    expect(ok.json.polls).toHaveLength(2)
    for (const query of [
      `?limit=2&junk=${"x".repeat(12_000)}`,
      "?limit=2&&&==&",
      "?%zz=%ff&limit=2",
      "?__proto__[limit]=500&limit=2",
      "?limit=2#fragment",
      `?${"a=1&".repeat(1000)}limit=2`
    ]) {
      const reply = await list(query)
      expect(reply.status, query.slice(0, 60)).toBe(200)
      expect(reply.json.polls).toHaveLength(2)
    }
    // The page after a cursor that decodes to another poll's place is still just a page.
    const cursor = Buffer.from("1:__proto__").toString("base64url")
    expect((await list(`?cursor=${cursor}`)).json).toEqual({ polls: [], next_cursor: null })
    expect((await list("?limit=2")).status).toBe(200)
  })

  if (stage === "sharded") {
    it("merges both nodes' polls into one order", async () => {
      for (let i = 0; i < 10; i++) await create("spread")
      for (const server of [stages.first(), stages.second()])
        expect(await server.client().zcard(CREATED_KEY)).toBeGreaterThan(0)
      const pages = await walk("limit=7")
      expect(ids(pages)).toEqual(newestFirst(pages.flatMap((p) => p.polls)))
    })
  }
})
