import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option, Schedule } from "effect"
import {
  DefinitionLost,
  OptionId,
  OrganiserKeyRequired,
  type PollDefinition,
  PollExists,
  PollId,
  PollNotFound,
  TooManyPolls,
  WrongOrganiserKey
} from "../src/Domain.js"
import * as Polls from "../src/Polls.js"
import * as PollsCached from "../src/Polls/Cached.js"
import * as PollsCluster from "../src/Polls/Cluster.js"
import * as PollsRedis from "../src/Polls/Redis.js"
import * as ClusterClient from "../src/RedisClient/Cluster.js"
import { type RedisCluster, startCluster } from "./support/cluster.js"
import { type RedisServer, startRedis } from "./support/redis.js"

/**
 * The `Polls` contract over each backend's layer: in memory, over a real redis-server (the listing also over two,
 * each page merged from both), and over a Redis Cluster (each page merged from its groups). The layers read their
 * server when they are built, in the `beforeAll` of their own `describe`, which runs after the file's `beforeAll` below
 * has started it. Each layer is one instance shared by its tests, so every test takes poll ids of its own.
 */

let shared: RedisServer
/** Its own server: Redis counts the definitions per node, so the limit test must not share one. */
let limited: RedisServer
/** The listing's own two nodes, emptied before each listing test: a page shows every poll a node holds. */
let listingA: RedisServer
let listingB: RedisServer
/**
 * 3 masters. The cluster backend counts the definitions of the whole cluster, so each of its layers starts on an
 * emptied cluster (the describes run one after the other).
 */
let cluster: RedisCluster

beforeAll(async () => {
  ;[shared, limited, listingA, listingB, cluster] = await Promise.all([
    startRedis(),
    startRedis(),
    startRedis(),
    startRedis(),
    startCluster({ replicas: 0 })
  ])
})

afterAll(async () => {
  await Promise.all([shared?.stop(), limited?.stop(), listingA?.stop(), listingB?.stop(), cluster?.stop()])
})

const emptyCluster = () =>
  Effect.promise(() =>
    Promise.all(cluster.nodes.filter((n) => n.role === "master").map((n) => cluster.node(n.port).flushall()))
  )
const clusterPolls = (maxPolls: number) => PollsCluster.layer({ seeds: cluster.seeds }, maxPolls)

const NODE = "polls_redis"
/** Far more than the suite defines: only the limit test reaches its layer's limit. */
const ROOMY = 10_000
const LIMIT = 3

/** As the stages compose them: the definitions cache over each backend. */
const CACHE = { ttl: "1 second", capacity: 1000 } as const
const redisLayer = (server: () => RedisServer, maxPolls: number) =>
  PollsCached.over(
    CACHE,
    Layer.unwrapEffect(Effect.sync(() => PollsRedis.layer([{ url: server().url, name: NODE }], maxPolls)))
  )

/** A cached read, or one past the cache. */
const read = (polls: Polls.PollsShape, id: PollId, exact: boolean) => (exact ? polls.getExact(id) : polls.get(id))

const backends: ReadonlyArray<{
  readonly name: string
  readonly layer: (server: () => RedisServer, maxPolls: number) => Layer.Layer<Polls.Polls>
}> = [
  { name: "memory", layer: (_server, maxPolls) => PollsCached.over(CACHE, Polls.layerMemory(maxPolls)) },
  { name: "redis", layer: redisLayer },
  {
    name: "redis cluster",
    layer: (_server, maxPolls) =>
      PollsCached.over(CACHE, Layer.unwrapEffect(Effect.map(emptyCluster(), () => clusterPolls(maxPolls))))
  }
]

let unique = 0
const pollId = (name: string) => PollId.make(`${name}-${process.pid}-${unique++}`)

const definition = (id: PollId, question = "Tea or coffee?"): PollDefinition =>
  Polls.define(
    {
      question,
      options: [
        { id: OptionId.make("tea"), label: "Tea" },
        { id: OptionId.make("coffee"), label: "Coffee" }
      ],
      one_vote_per_voter: false
    },
    id,
    new Date("2026-01-01T00:00:00.000Z")
  )

/** Defines a new poll; returns its definition and organiser key. */
const defined = (name: string, question?: string) =>
  Effect.gen(function* () {
    const polls = yield* Polls.Polls
    const id = pollId(name)
    const organiser = Polls.organiserKey()
    const created = yield* polls.create(definition(id, question), organiser.hash)
    return { id, created, organiser }
  })

const DEFINITION_FIELDS = ["closed", "closes_at", "created_at", "id", "one_vote_per_voter", "options", "question"]

for (const backend of backends) {
  describe(`Polls over ${backend.name}`, () => {
    it.layer(backend.layer(() => shared, ROOMY))("the contract", (it) => {
      it.effect("get finds what create defined, without the organiser's key or its hash", () =>
        Effect.gen(function* () {
          const polls = yield* Polls.Polls
          const { created, id, organiser } = yield* defined("create-get")
          expect(created).toEqual(definition(id))
          for (const exact of [false, true]) {
            const found = yield* read(polls, id, exact)
            expect(found).toEqual(Option.some(definition(id)))
            const poll = Option.getOrThrow(found)
            expect(Object.keys(poll).sort()).toEqual(DEFINITION_FIELDS)
            expect(JSON.stringify(poll)).not.toContain(organiser.hash)
            expect(JSON.stringify(poll)).not.toContain(organiser.key)
          }
        })
      )

      it.effect("get of a poll nobody defined is None, cached or exact", () =>
        Effect.gen(function* () {
          const polls = yield* Polls.Polls
          const id = pollId("never")
          expect(yield* polls.get(id)).toEqual(Option.none())
          expect(yield* polls.getExact(id)).toEqual(Option.none())
        })
      )

      it.effect("mayBeDefined: false for a poll this instance has not seen defined, true once create answered", () =>
        Effect.gen(function* () {
          const polls = yield* Polls.Polls
          const id = pollId("maybe")
          expect(polls.mayBeDefined(id)).toBe(false)
          yield* polls.create(definition(id), Polls.organiserKey().hash)
          expect(polls.mayBeDefined(id)).toBe(true)
        })
      )

      it.effect("a second create of the same id is PollExists and changes neither the definition nor the key", () =>
        Effect.gen(function* () {
          const polls = yield* Polls.Polls
          const { id, organiser } = yield* defined("exists")
          const other = Polls.organiserKey()
          const refused = yield* Effect.flip(polls.create(definition(id, "Another question?"), other.hash))
          expect(refused).toBeInstanceOf(PollExists)
          expect(refused).toMatchObject({ pollId: id })
          expect(yield* polls.get(id)).toEqual(Option.some(definition(id)))
          expect(yield* Effect.flip(polls.close(id, other.key))).toBeInstanceOf(WrongOrganiserKey)
          expect((yield* polls.close(id, organiser.key)).closed).toBe(true)
        })
      )

      it.effect("close needs the organiser key: none is OrganiserKeyRequired, another is WrongOrganiserKey", () =>
        Effect.gen(function* () {
          const polls = yield* Polls.Polls
          const { id } = yield* defined("close-refused")
          for (const missing of [undefined, ""]) {
            const refused = yield* Effect.flip(polls.close(id, missing))
            expect(refused).toBeInstanceOf(OrganiserKeyRequired)
            expect(refused).toMatchObject({ pollId: id })
          }
          const wrong = yield* Effect.flip(polls.close(id, Polls.organiserKey().key))
          expect(wrong).toBeInstanceOf(WrongOrganiserKey)
          expect(wrong).toMatchObject({ pollId: id })
          // Refused closes leave the poll open.
          for (const exact of [false, true]) expect(Option.getOrThrow(yield* read(polls, id, exact)).closed).toBe(false)
        })
      )

      it.effect("close with the organiser key closes the poll, and get sees it closed at once", () =>
        Effect.gen(function* () {
          const polls = yield* Polls.Polls
          const { id, organiser } = yield* defined("close")
          // Read once, so the definition is in the cache when the poll closes.
          expect(Option.getOrThrow(yield* polls.get(id)).closed).toBe(false)
          const closed = yield* polls.close(id, organiser.key)
          expect(closed).toEqual({ ...definition(id), closed: true })
          expect(yield* polls.get(id)).toEqual(Option.some(closed))
          expect(yield* polls.getExact(id)).toEqual(Option.some(closed))
          // Closing again is allowed and changes nothing.
          expect(yield* polls.close(id, organiser.key)).toEqual(closed)
        })
      )

      it.effect("close of a poll nobody defined is PollNotFound, whatever key comes with it", () =>
        Effect.gen(function* () {
          const polls = yield* Polls.Polls
          const id = pollId("close-unknown")
          for (const key of [undefined, "", Polls.organiserKey().key]) {
            const refused = yield* Effect.flip(polls.close(id, key))
            expect(refused).toBeInstanceOf(PollNotFound)
            expect(refused).toMatchObject({ pollId: id })
          }
          expect(polls.mayBeDefined(id)).toBe(false)
        })
      )
    })

    it.layer(backend.layer(() => limited, LIMIT))("at its limit", (it) => {
      it.effect("create past maxPolls is TooManyPolls and defines nothing; a taken id is still PollExists", () =>
        Effect.gen(function* () {
          const polls = yield* Polls.Polls
          const kept: Array<PollId> = []
          for (let i = 0; i < LIMIT; i++) kept.push((yield* defined("limit")).id)
          const id = pollId("limit-past")
          const refused = yield* Effect.flip(polls.create(definition(id), Polls.organiserKey().hash))
          expect(refused).toBeInstanceOf(TooManyPolls)
          expect(refused).toMatchObject({ limit: LIMIT })
          expect(polls.mayBeDefined(id)).toBe(false)
          expect(yield* polls.getExact(id)).toEqual(Option.none())
          const taken = yield* Effect.flip(polls.create(definition(kept[0]!), Polls.organiserKey().hash))
          expect(taken).toBeInstanceOf(PollExists)
          for (const id of kept) expect(yield* polls.get(id)).toEqual(Option.some(definition(id)))
        })
      )
    })
  })
}

describe("Polls over redis, beyond the contract", () => {
  it.layer(redisLayer(() => shared, ROOMY))("one instance", (it) => {
    it.effect("keeps the organiser's key hash beside the definition, not in it", () =>
      Effect.gen(function* () {
        const { id, organiser } = yield* defined("stored")
        const raw = shared.client()
        const stored = yield* Effect.promise(() => raw.get(PollsRedis.definitionKey(id)))
        expect(JSON.parse(stored!)).toEqual(definition(id))
        expect(stored).not.toContain(organiser.hash)
        expect(yield* Effect.promise(() => raw.get(PollsRedis.organiserKey(id)))).toBe(organiser.hash)
      })
    )

    it.effect("get serves the cached definition; getExact reads past the cache and refreshes it", () =>
      Effect.gen(function* () {
        const polls = yield* Polls.Polls
        const { id } = yield* defined("fresh")
        expect(yield* polls.get(id)).toEqual(Option.some(definition(id)))
        // Changed behind the instance's back: no announcement, so only the cache's time-to-live would end the copy
        // (and the test clock does not move).
        const changed = definition(id, "Changed behind its back?")
        yield* Effect.promise(() => shared.client().set(PollsRedis.definitionKey(id), JSON.stringify(changed)))
        expect(yield* polls.get(id)).toEqual(Option.some(definition(id)))
        expect(yield* polls.getExact(id)).toEqual(Option.some(changed))
        expect(yield* polls.get(id)).toEqual(Option.some(changed))
      })
    )

    it.effect("a definition deleted under a poll it saw defined is DefinitionLost, cached or exact, not None", () =>
      Effect.gen(function* () {
        const polls = yield* Polls.Polls
        const { id, organiser } = yield* defined("lost")
        yield* Effect.promise(() => shared.client().del(PollsRedis.definitionKey(id)))
        for (const exact of [false, true, false]) {
          const lost = yield* Effect.flip(read(polls, id, exact))
          expect(lost).toBeInstanceOf(DefinitionLost)
          expect(lost).toMatchObject({ pollId: id })
        }
        expect(polls.mayBeDefined(id)).toBe(true)
        // Its organiser's key survived the loss: closing says the definition is lost, not that it never existed.
        expect(yield* Effect.flip(polls.close(id, organiser.key))).toBeInstanceOf(DefinitionLost)
      })
    )

    it.scoped("a second instance on the same node knows the poll is defined as soon as create answers", () =>
      Effect.gen(function* () {
        const other = Context.get(
          yield* Layer.build(PollsRedis.layer([{ url: shared.url, name: NODE }], ROOMY)),
          Polls.Polls
        )
        const id = pollId("announced")
        expect(other.mayBeDefined(id)).toBe(false)
        // At once: an instance is subscribed to the announcements by the time its layer is built.
        const organiser = Polls.organiserKey()
        yield* Effect.flatMap(Polls.Polls, (polls) => polls.create(definition(id), organiser.hash))
        expect(other.mayBeDefined(id)).toBe(true)
        expect(yield* other.get(id)).toEqual(Option.some(definition(id)))
        // Either instance closes it with the key the first one was given.
        expect((yield* other.close(id, organiser.key)).closed).toBe(true)
      })
    )
  })
})

// ---------------------------------------------------------------------------------------------------------------------
// Listing: pages newest first, over memory, one Redis node and two (merged by the ring's placement).

const LIST_A = "list_a"
const LIST_B = "list_b"
/** 2026-01-01T00:00:00Z: the listing tests' polls are created from here on, a second (or a few) apart. */
const T0 = Date.UTC(2026, 0, 1)

const listingBackends: ReadonlyArray<{
  readonly name: string
  /** The Redis nodes under the backend, emptied before each test; none for memory and the cluster. */
  readonly servers: () => ReadonlyArray<readonly [name: string, server: RedisServer]>
  /** The backend is the Redis Cluster, emptied before each test. */
  readonly cluster?: true
}> = [
  { name: "memory", servers: () => [] },
  { name: "redis", servers: () => [[LIST_A, listingA]] },
  {
    name: "two redis nodes",
    servers: () => [
      [LIST_A, listingA],
      [LIST_B, listingB]
    ]
  },
  { name: "redis cluster", servers: () => [], cluster: true }
]

/** A definition created at `createdAtMs`, closing at `closesAtMs` if given. */
const definitionAt = (id: string, createdAtMs: number, closesAtMs?: number): PollDefinition => ({
  ...definition(PollId.make(id)),
  created_at: new Date(createdAtMs).toISOString(),
  closes_at: closesAtMs === undefined ? null : new Date(closesAtMs).toISOString()
})

/** The listing's order: newest first, then by id, descending. */
const newestFirst = (polls: ReadonlyArray<PollDefinition>) =>
  [...polls]
    .sort((a, b) =>
      a.created_at !== b.created_at ? (a.created_at < b.created_at ? 1 : -1) : a.id < b.id ? 1 : a.id > b.id ? -1 : 0
    )
    .map((p) => p.id)

/** Every page from `after` on, until one has no `next`. */
const walk = (polls: Polls.PollsShape, query: Omit<Polls.ListQuery, "after">, after?: Polls.ListPosition) =>
  Effect.gen(function* () {
    const pages: Array<Polls.ListPage> = []
    let next = after
    do {
      const page = yield* polls.list({ ...query, after: next })
      pages.push(page)
      next = page.next
      if (pages.length > 1000) throw new Error("the pages do not end")
    } while (next !== undefined)
    return pages
  })

const idsOf = (pages: ReadonlyArray<Polls.ListPage>) => pages.flatMap((page) => page.polls.map((p) => p.id))

/** A shuffled order that is the same on every run. */
const shuffled = <A>(items: ReadonlyArray<A>) =>
  items
    .map((item, i) => [(i * 7919) % 101, item] as const)
    .sort((a, b) => a[0] - b[0])
    .map(([, item]) => item)

const NOW = T0 + 1_000_000

for (const backend of listingBackends) {
  describe(`listing over ${backend.name}`, () => {
    /** The backend with nothing defined yet: its nodes emptied, its layer (behind the cache, as staged) built anew. */
    const fresh = Effect.gen(function* () {
      const servers = backend.servers()
      yield* Effect.promise(() => Promise.all(servers.map(([, server]) => server.client().flushall())))
      if (backend.cluster) yield* emptyCluster()
      const layer = backend.cluster
        ? clusterPolls(ROOMY)
        : servers.length === 0
          ? Polls.layerMemory(ROOMY)
          : PollsRedis.layer(
              servers.map(([name, server]) => ({ url: server.url, name })),
              ROOMY
            )
      const polls = Context.get(yield* Layer.build(PollsCached.over(CACHE, layer)), Polls.Polls)
      const create = (poll: PollDefinition) => polls.create(poll, Polls.organiserKey().hash)
      return { polls, create, servers }
    })

    it.scoped("pages run newest first (then by id), each poll once, with no next after the last", () =>
      Effect.gen(function* () {
        const { polls, create, servers } = yield* fresh
        // 23 polls, three to a millisecond for the id to order, created out of order.
        const all = Array.from({ length: 23 }, (_, i) => definitionAt(`p${(i * 37) % 100}`, T0 + Math.floor(i / 3)))
        for (const poll of shuffled(all)) yield* create(poll)
        const expected = newestFirst(all)

        const pages = yield* walk(polls, { status: "all", limit: 5, now: NOW })
        expect(pages.map((p) => p.polls.length)).toEqual([5, 5, 5, 5, 3])
        expect(idsOf(pages)).toEqual(expected)
        expect(pages.map((p) => p.next === undefined)).toEqual([false, false, false, false, true])
        // Each page starts where the one before ended: its `next` is its last poll.
        expect(pages[0]!.next).toEqual({ createdAtMs: Date.parse(pages[0]!.polls[4]!.created_at), id: expected[4] })
        // The polls as defined, not as ids only.
        expect(pages[0]!.polls[0]).toEqual(all.find((p) => p.id === expected[0]))

        // A page that ends exactly at the last poll says so, rather than sending the client to an empty page.
        expect(yield* walk(polls, { status: "all", limit: 23, now: NOW })).toEqual([
          { polls: expected.map((id) => all.find((p) => p.id === id)), next: undefined }
        ])
        const ones = yield* walk(polls, { status: "all", limit: 1, now: NOW })
        expect(ones).toHaveLength(23)
        expect(idsOf(ones)).toEqual(expected)
        const hundred = yield* walk(polls, { status: "all", limit: 100, now: NOW })
        expect(hundred.map((p) => p.polls.length)).toEqual([23])

        // Over two nodes, both hold some of them: the pages above merged the two.
        for (const [, server] of servers) {
          expect(yield* Effect.promise(() => server.client().zcard(PollsRedis.CREATED_KEY))).toBeGreaterThan(3)
        }
        // Over the cluster, many groups hold some of them: the pages merged those.
        if (backend.cluster) {
          const raw = cluster.client()
          const sizes = yield* Effect.forEach(ClusterClient.allGroups, (group) =>
            Effect.promise(() => raw.zcard(PollsCluster.createdKey(group)))
          )
          expect(sizes.reduce((a, b) => a + b, 0)).toBe(23)
          expect(sizes.filter((n) => n > 0).length).toBeGreaterThan(3)
        }
      })
    )

    it.scoped("polls created between pages are neither repeated nor the cause of a skip", () =>
      Effect.gen(function* () {
        const { polls, create } = yield* fresh
        const before = Array.from({ length: 12 }, (_, i) => definitionAt(`old${i}`, T0 + i * 1000))
        for (const poll of before) yield* create(poll)
        const first = yield* polls.list({ status: "all", limit: 5, now: NOW })
        expect(first.polls.map((p) => p.id)).toEqual(newestFirst(before).slice(0, 5))
        const cursor = first.polls[4]!
        const at = Date.parse(cursor.created_at)

        // New polls at the top, beside the cursor in its millisecond (before it and after it by id), and one whose
        // clock is behind every other: a place in the order, not an offset, so only the last two come after it.
        const between = [
          ...Array.from({ length: 4 }, (_, i) => definitionAt(`new${i}`, T0 + 100_000 + i)),
          definitionAt(`${cursor.id}z`, at),
          definitionAt(`${cursor.id.slice(0, -1)}`, at),
          definitionAt("skewed", T0 - 1)
        ]
        for (const poll of between) yield* create(poll)

        const rest = yield* walk(polls, { status: "all", limit: 5, now: NOW }, first.next)
        const after = [...before, ...between].filter(
          (p) => p.id !== cursor.id && newestFirst([p, cursor])[0] === cursor.id
        )
        expect(idsOf(rest)).toEqual(newestFirst(after))
        expect(idsOf(rest)).toEqual(["old", ...newestFirst(before).slice(5), "skewed"])
        // Every poll that was there for the first page, exactly once over all the pages.
        const seen = [...first.polls.map((p) => p.id), ...idsOf(rest)]
        for (const poll of before) expect(seen.filter((id) => id === poll.id)).toHaveLength(1)
      })
    )

    it.scoped("status filters by isOpen at the query's now: closed, or past closes_at, is closed", () =>
      Effect.gen(function* () {
        const { polls, create } = yield* fresh
        const keys = new Map<string, string>()
        const make = (poll: PollDefinition) =>
          Effect.gen(function* () {
            const organiser = Polls.organiserKey()
            keys.set(poll.id, organiser.key)
            yield* polls.create(poll, organiser.hash)
            return poll
          })
        const open = yield* make(definitionAt("open", T0 + 5000))
        const closing = yield* make(definitionAt("closing", T0 + 4000, NOW + 60_000))
        const expired = yield* make(definitionAt("expired", T0 + 3000, NOW - 1))
        const closed = yield* make(definitionAt("closed", T0 + 2000))
        const older = yield* make(definitionAt("older", T0 + 1000))
        yield* polls.close(closed.id, keys.get(closed.id))
        // Closing a poll does not move it.
        expect(idsOf(yield* walk(polls, { status: "all", limit: 2, now: NOW }))).toEqual([
          "open",
          "closing",
          "expired",
          "closed",
          "older"
        ])
        expect(idsOf(yield* walk(polls, { status: "open", limit: 2, now: NOW }))).toEqual(["open", "closing", "older"])
        const closedPages = yield* walk(polls, { status: "closed", limit: 2, now: NOW })
        expect(idsOf(closedPages)).toEqual(["expired", "closed"])
        expect(closedPages.flatMap((p) => p.polls).find((p) => p.id === "closed")?.closed).toBe(true)
        // A minute later the poll closing then is closed too.
        const later = NOW + 60_000
        expect(idsOf(yield* walk(polls, { status: "closed", limit: 5, now: later }))).toEqual([
          "closing",
          "expired",
          "closed"
        ])
        expect(idsOf(yield* walk(polls, { status: "open", limit: 5, now: later }))).toEqual(["open", "older"])
        expect([open, closing, expired, older].every((p) => p.closed === false)).toBe(true)
      })
    )

    it.scoped(
      "a page passes over at most maxSkipped polls: it ends short with a next, and the pages find them all",
      () =>
        Effect.gen(function* () {
          const { polls, create } = yield* fresh
          // Newest first: 9 polls past their closing time, then an open one, 6 more closed, 2 open.
          const all = [
            ...Array.from({ length: 9 }, (_, i) => definitionAt(`shut${i}`, T0 + 100 - i, T0)),
            definitionAt("open-a", T0 + 90),
            ...Array.from({ length: 6 }, (_, i) => definitionAt(`past${i}`, T0 + 80 - i, T0)),
            definitionAt("open-b", T0 + 70),
            definitionAt("open-c", T0 + 69)
          ]
          for (const poll of shuffled(all)) yield* create(poll)
          const query = { status: "open", limit: 2, now: NOW, maxSkipped: 4 } as const
          const first = yield* polls.list(query)
          expect(first.polls).toEqual([])
          expect(first.next).toEqual({ createdAtMs: T0 + 97, id: "shut3" })
          const pages = yield* walk(polls, query)
          expect(idsOf(pages)).toEqual(["open-a", "open-b", "open-c"])
          expect(pages.every((p) => p.polls.length <= 2)).toBe(true)
          // Two pages of 4 passed over; the ninth, open-a and three more; the last three and both open ones. (The
          // last poll of an index read in full may leave one empty page: the walk cannot know that nothing follows.)
          expect(pages.slice(0, 4).map((p) => p.polls.map((poll) => poll.id))).toEqual([
            [],
            [],
            ["open-a"],
            ["open-b", "open-c"]
          ])
          expect(pages.slice(4).every((p) => p.polls.length === 0)).toBe(true)
          expect(pages.length).toBeLessThanOrEqual(5)
          // Without the bound the filter reads on until the page is full.
          expect(idsOf([yield* polls.list({ ...query, maxSkipped: 100 })])).toEqual(["open-a", "open-b"])
        })
    )

    it.scoped("an empty store, and a cursor past the oldest poll, give one empty page with no next", () =>
      Effect.gen(function* () {
        const { polls, create } = yield* fresh
        expect(yield* polls.list({ status: "all", limit: 20, now: NOW })).toEqual({ polls: [], next: undefined })
        yield* create(definitionAt("only", T0))
        const after = { createdAtMs: T0, id: PollId.make("only") }
        expect(yield* polls.list({ status: "all", limit: 20, now: NOW, after })).toEqual({ polls: [], next: undefined })
        // A place between polls that no poll holds is a place all the same.
        const between = { createdAtMs: T0 + 1, id: PollId.make("none") }
        expect(idsOf([yield* polls.list({ status: "all", limit: 20, now: NOW, after: between })])).toEqual(["only"])
      })
    )
  })
}

describe("listing over redis, beyond the contract", () => {
  const layerOn = (servers: ReadonlyArray<readonly [string, RedisServer]>) =>
    PollsRedis.layer(
      servers.map(([name, server]) => ({ url: server.url, name })),
      ROOMY
    )
  const build = (servers: ReadonlyArray<readonly [string, RedisServer]>) =>
    Effect.gen(function* () {
      yield* Effect.promise(() => Promise.all(servers.map(([, server]) => server.client().flushall())))
      return Context.get(yield* Layer.build(layerOn(servers)), Polls.Polls)
    })

  it.scoped("create writes the created index in the same script as the definition", () =>
    Effect.gen(function* () {
      const polls = yield* build([[LIST_A, listingA]])
      yield* polls.create(definitionAt("indexed", T0 + 1234), Polls.organiserKey().hash)
      const raw = listingA.client()
      expect(yield* Effect.promise(() => raw.zrange(PollsRedis.CREATED_KEY, 0, -1, "WITHSCORES"))).toEqual([
        "0001767225601234:indexed",
        "0"
      ])
      // A refused create (the id is taken) adds nothing.
      const again = yield* Effect.flip(polls.create(definitionAt("indexed", T0 + 9999), Polls.organiserKey().hash))
      expect(again).toBeInstanceOf(PollExists)
      expect(yield* Effect.promise(() => raw.zcard(PollsRedis.CREATED_KEY))).toBe(1)
    })
  )

  it.scopedLive("polls defined before the created index existed are added to it when an instance starts", () =>
    Effect.gen(function* () {
      const raw = listingA.client()
      yield* Effect.promise(() => raw.flushall())
      // What an earlier version left: definitions and the set of ids, no created index.
      const earlier = Array.from({ length: 450 }, (_, i) => definitionAt(`early${i}`, T0 + i))
      yield* Effect.promise(async () => {
        for (const poll of earlier) {
          await raw.set(PollsRedis.definitionKey(poll.id), JSON.stringify(poll))
          await raw.sadd(PollsRedis.INDEX_KEY, poll.id)
        }
      })
      const polls = Context.get(yield* Layer.build(layerOn([[LIST_A, listingA]])), Polls.Polls)
      yield* polls.create(definitionAt("later", T0 + 10_000), Polls.organiserKey().hash)
      const pages = yield* walk(polls, { status: "all", limit: 100, now: NOW }).pipe(
        Effect.filterOrFail((pages) => idsOf(pages).length === 451),
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds")))
      )
      expect(idsOf(pages)).toEqual(["later", ...newestFirst(earlier)])
      expect(yield* Effect.promise(() => raw.zcard(PollsRedis.CREATED_KEY))).toBe(451)
    })
  )

  it.scoped("an entry whose definition is gone is not listed, and a poll defined again is listed once", () =>
    Effect.gen(function* () {
      const polls = yield* build([[LIST_A, listingA]])
      yield* polls.create(definitionAt("kept", T0), Polls.organiserKey().hash)
      yield* polls.create(definitionAt("lost", T0 + 1), Polls.organiserKey().hash)
      yield* Effect.promise(() => listingA.client().del(PollsRedis.definitionKey("lost")))
      expect(idsOf([yield* polls.list({ status: "all", limit: 10, now: NOW })])).toEqual(["kept"])
      // Its organiser defines it again, later: the old entry is stale (another created_at), the new one lists it.
      yield* polls.create(definitionAt("lost", T0 + 5), Polls.organiserKey().hash)
      expect(idsOf(yield* walk(polls, { status: "all", limit: 1, now: NOW }))).toEqual(["lost", "kept"])
    })
  )

  it.scoped("over two nodes, a copy left on the node the ring does not give the poll is not listed twice", () =>
    Effect.gen(function* () {
      const servers = [
        [LIST_A, listingA],
        [LIST_B, listingB]
      ] as const
      const polls = yield* build(servers)
      const all = Array.from({ length: 8 }, (_, i) => definitionAt(`moved${i}`, T0 + i))
      for (const poll of all) yield* polls.create(poll, Polls.organiserKey().hash)
      // Every poll's definition and entry copied to both nodes, as a move between nodes leaves them for a while.
      yield* Effect.promise(async () => {
        for (const [, server] of servers) {
          const raw = server.client()
          for (const poll of all) {
            await raw.set(PollsRedis.definitionKey(poll.id), JSON.stringify(poll))
            await raw.zadd(PollsRedis.CREATED_KEY, 0, Polls.positionKey(Polls.positionOf(poll)))
          }
        }
      })
      expect(idsOf(yield* walk(polls, { status: "all", limit: 3, now: NOW }))).toEqual(newestFirst(all))
    })
  )
})

describe("collectPage", () => {
  /** An index of `keys` (any order), counting the entries it hands out. */
  const index = (keys: ReadonlyArray<string>, poll: (key: string) => PollDefinition | undefined) => {
    const sorted = [...keys].sort().reverse()
    const source = {
      read: 0,
      calls: 0,
      fetch: ((before, count) =>
        Effect.sync(() => {
          const entries = sorted
            .filter((key) => before === undefined || key < before)
            .slice(0, count)
            .map((key) => ({ key, poll: poll(key) }))
          source.read += entries.length
          source.calls++
          return entries
        })) satisfies Polls.ListSource<never>
    }
    return source
  }
  const keyOf = (ms: number, id: string) => Polls.positionKey({ createdAtMs: ms, id: PollId.make(id) })
  const pollOf = (key: string) => {
    const { createdAtMs, id } = Polls.positionOfKey(key)
    return definitionAt(id, createdAtMs, createdAtMs % 2 === 0 ? T0 : undefined)
  }

  it.effect("an unfiltered page reads each index once, limit + 1 entries, and merges them in order", () =>
    Effect.gen(function* () {
      const sources = [0, 1, 2].map((n) =>
        index(
          Array.from({ length: 50 }, (_, i) => keyOf(T0 + i * 3 + n, `n${n}-${i}`)),
          pollOf
        )
      )
      const page = yield* Polls.collectPage(
        sources.map((s) => s.fetch),
        { status: "all", limit: 10, now: NOW }
      )
      expect(page.polls.map((p) => Date.parse(p.created_at))).toEqual(
        Array.from({ length: 10 }, (_, i) => T0 + 149 - i)
      )
      expect(sources.map((s) => [s.calls, s.read])).toEqual([
        [1, 11],
        [1, 11],
        [1, 11]
      ])
    })
  )

  it.effect("a filtered page reads no more than limit + maxSkipped entries past what each index read first", () =>
    Effect.gen(function* () {
      // Even times are closed polls (T0 is their closing time): half of every index is skipped.
      const sources = [0, 1].map((n) =>
        index(
          Array.from({ length: 400 }, (_, i) => keyOf(T0 + i * 2 + n, `n${n}-${i}`)),
          pollOf
        )
      )
      const limit = 5
      const maxSkipped = 30
      const page = yield* Polls.collectPage(
        sources.map((s) => s.fetch),
        { status: "open", limit, now: NOW, maxSkipped }
      )
      expect(page.polls).toHaveLength(5)
      const read = sources.reduce((n, s) => n + s.read, 0)
      expect(read).toBeLessThanOrEqual(sources.length * (limit + 1) + limit + maxSkipped)
      // Only odd times are open, and only node 1 has them: node 0 was passed over.
      expect(page.polls.every((p) => p.id.startsWith("n1-"))).toBe(true)
      const closed = index(
        Array.from({ length: 400 }, (_, i) => keyOf(T0 + i * 2, `c${i}`)),
        pollOf
      )
      const short = yield* Polls.collectPage([closed.fetch], { status: "open", limit, now: NOW, maxSkipped })
      expect(short.polls).toEqual([])
      expect(closed.read).toBeLessThanOrEqual(limit + 1 + maxSkipped)
      expect(short.next).toEqual({ createdAtMs: T0 + 2 * (400 - maxSkipped), id: `c${400 - maxSkipped}` })
    })
  )
})
