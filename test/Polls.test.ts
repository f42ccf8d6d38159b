import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option } from "effect"
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
import * as PollsRedis from "../src/Polls/Redis.js"
import { type RedisServer, startRedis } from "./support/redis.js"

/**
 * The `Polls` contract over each backend's layer: in memory, and over a real redis-server. The layers read their
 * server when they are built, in the `beforeAll` of their own `describe`, which runs after the file's `beforeAll` below
 * has started it. Each layer is one instance shared by its tests, so every test takes poll ids of its own.
 */

let shared: RedisServer
/** Its own server: Redis counts the definitions per node, so the limit test must not share one. */
let limited: RedisServer

beforeAll(async () => {
  ;[shared, limited] = await Promise.all([startRedis(), startRedis()])
})

afterAll(async () => {
  await Promise.all([shared?.stop(), limited?.stop()])
})

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
  { name: "redis", layer: redisLayer }
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
