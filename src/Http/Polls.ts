import * as Cookies from "@effect/platform/Cookies"
import { Clock, Effect, Either, Option, ParseResult, Schema } from "effect"
import { randomBytes } from "node:crypto"
import type { IncomingMessage, ServerResponse } from "node:http"
import { isOpen, isPollId, PollId, PollNotFound, type PollDefinition } from "../Domain.js"
import type { FeedShape } from "../Feed.js"
import * as Page from "../Page.js"
import { define, type ListPosition, organiserKey, type PollsShape } from "../Polls.js"
import { bearerToken, cookie, parseJson, parsePollDraft, parsePollId } from "./Decode.js"
import { InvalidRequest, type Refusal } from "./Errors.js"
import { fromError, type Reply, reply } from "./Reply.js"

/** A definition as the API answers it: with whether it takes votes at `now`. */
export const pollBody = (poll: PollDefinition, now: number) => ({ ...poll, open: isOpen(poll, now) })

/** Polls per page of `GET /polls`: the default, and the most a `limit` may ask for. */
export const DEFAULT_LIMIT = 20
export const MAX_LIMIT = 100

/** Longer than any cursor this server writes (a 16-digit time and a 64-character id, in base64url). */
const MAX_CURSOR_CHARS = 120

/** A cursor is a list position as base64url text: opaque to clients, and refused unless it is exactly one we wrote. */
const writeCursor = (p: { readonly createdAtMs: number; readonly id: string }) =>
  Buffer.from(`${p.createdAtMs}:${p.id}`, "utf8").toString("base64url")

const readCursor = (text: string): ListPosition | undefined => {
  if (text.length > MAX_CURSOR_CHARS || !/^[A-Za-z0-9_-]+$/.test(text)) return undefined
  const match = /^(0|[1-9][0-9]{0,15}):(.*)$/s.exec(Buffer.from(text, "base64url").toString("utf8"))
  if (match === null || !isPollId(match[2])) return undefined
  const position = { createdAtMs: Number(match[1]), id: match[2] }
  // base64url decoding skips what it cannot read: only the text we would write for this position is one of ours.
  return Number.isSafeInteger(position.createdAtMs) && writeCursor(position) === text ? position : undefined
}

const Cursor = Schema.transformOrFail(Schema.String, Schema.Struct({ createdAtMs: Schema.Number, id: PollId }), {
  strict: true,
  decode: (text, _, ast) => {
    const position = readCursor(text)
    return position === undefined
      ? ParseResult.fail(new ParseResult.Type(ast, text, "is not a next_cursor this server gave out"))
      : ParseResult.succeed(position)
  },
  encode: (position) => ParseResult.succeed(writeCursor(position))
}).annotations({ description: "The `next_cursor` of the page before (opaque)." })

/**
 * The query of `GET /polls`, as sent (every value a string) and as used. Other parameters are ignored; each of these
 * may be given once.
 */
export const ListParameters = Schema.Struct({
  status: Schema.optionalWith(
    Schema.Literal("open", "closed", "all").annotations({
      message: () => ({ message: "must be open, closed or all", override: true }),
      description: "Which polls: `open` (taking votes now), `closed` (closed, or past `closes_at`) or `all`."
    }),
    { exact: true, default: () => "all" as const }
  ),
  limit: Schema.optionalWith(
    Schema.compose(
      Schema.String.pipe(
        Schema.pattern(/^(?:[1-9][0-9]?|100)$/, { message: () => `must be a whole number from 1 to ${MAX_LIMIT}` })
      ),
      Schema.NumberFromString
    ).annotations({ description: `Polls per page, 1 to ${MAX_LIMIT} (default ${DEFAULT_LIMIT}).` }),
    { exact: true, default: () => DEFAULT_LIMIT }
  ),
  cursor: Schema.optionalWith(Cursor, { exact: true })
})

const LIST_PARAMETERS = ["status", "limit", "cursor"] as const
const decodeListParameters = Schema.decodeUnknownEither(ListParameters, { errors: "all" })
const encodeCursor = Schema.encodeSync(Cursor)

const invalidRequest = (message: string) => fromError(new InvalidRequest({ message }))

/**
 * The listing's query from a request URL. URLSearchParams never throws, whatever the text (escapes that do not
 * decode are kept as sent), and it keeps names apart from any object's properties, so `__proto__=` is just a name.
 */
export const parseListQuery = (url: string): Either.Either<typeof ListParameters.Type, Reply> => {
  const at = url.indexOf("?")
  const params = new URLSearchParams(at === -1 ? "" : url.slice(at + 1))
  const given: Partial<Record<(typeof LIST_PARAMETERS)[number], string>> = {}
  for (const name of LIST_PARAMETERS) {
    const values = params.getAll(name)
    if (values.length > 1) return Either.left(invalidRequest(`${name} is given ${values.length} times; give it once`))
    if (values.length === 1) given[name] = values[0]!
  }
  return Either.mapLeft(decodeListParameters(given), (e) =>
    invalidRequest(
      ParseResult.ArrayFormatter.formatErrorSync(e)
        .map((issue) => `${issue.path.join(".")} ${issue.message}`)
        .join("; ")
    )
  )
}

const orReply = (effect: Effect.Effect<Reply, Refusal>) => Effect.catchAll(effect, (e) => Effect.succeed(fromError(e)))

/** Defining, listing, reading and closing polls. */
export const make = (polls: PollsShape, feed: FeedShape) => {
  const createPoll = (text: string): Effect.Effect<Reply> => {
    const json = parseJson(text)
    if (Either.isLeft(json)) return Effect.succeed(json.left)
    const draft = parsePollDraft(json.right)
    if (Either.isLeft(draft)) return Effect.succeed(draft.left)
    return orReply(
      Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis
        const id = draft.right.id ?? (randomBytes(6).toString("base64url") as PollId)
        const key = organiserKey()
        const poll = yield* polls.create(define(draft.right, id, new Date(now)), key.hash)
        // The only time the key is shown: the store keeps its hash.
        return reply(201, { ...pollBody(poll, now), organiser_key: key.key })
      })
    )
  }

  const withPoll = (rawPollId: string, use: (pollId: PollId) => Effect.Effect<Reply>) => {
    const pollId = parsePollId(rawPollId)
    return Either.isLeft(pollId) ? Effect.succeed(pollId.left) : use(pollId.right)
  }

  const getPoll = (rawPollId: string) =>
    withPoll(rawPollId, (pollId) =>
      orReply(
        Effect.gen(function* () {
          const poll = yield* polls.get(pollId)
          if (Option.isNone(poll)) return fromError(new PollNotFound({ pollId }))
          return reply(200, pollBody(poll.value, yield* Clock.currentTimeMillis))
        })
      )
    )

  const closePoll = (rawPollId: string, authorization: string | undefined) =>
    withPoll(rawPollId, (pollId) =>
      orReply(
        Effect.gen(function* () {
          const poll = yield* polls.close(pollId, bearerToken(authorization))
          yield* feed.changed(pollId)
          return reply(200, pollBody(poll, yield* Clock.currentTimeMillis))
        })
      )
    )

  const listPolls = (url: string): Effect.Effect<Reply> => {
    const query = parseListQuery(url)
    if (Either.isLeft(query)) return Effect.succeed(query.left)
    const { status, limit, cursor } = query.right
    return orReply(
      Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis
        const page = yield* polls.list({ status, limit, after: cursor, now })
        return reply(200, {
          polls: page.polls.map((poll) => pollBody(poll, now)),
          next_cursor: page.next === undefined ? null : encodeCursor(page.next)
        })
      })
    )
  }

  return { createPoll, getPoll, closePoll, listPolls }
}

/** The poll's page, for a browser's bare `GET /polls/{id}`. */
export const sendPage = (req: IncomingMessage, res: ServerResponse, pollId: string) => {
  const html = Page.render(pollId)
  const headers: Record<string, string | number> = {
    "content-type": "text/html; charset=utf-8",
    "content-length": Buffer.byteLength(html),
    "cache-control": "no-store"
  }
  // Gives the browser a voter id once, so one-vote-per-voter polls can tell its second vote from a new voter's.
  if (cookie(req, "voter") === undefined) {
    headers["set-cookie"] = Cookies.serializeCookie(
      Cookies.unsafeMakeCookie("voter", randomBytes(12).toString("base64url"), {
        path: "/",
        maxAge: "365 days",
        sameSite: "lax"
      })
    )
  }
  res.writeHead(200, headers)
  res.end(html)
}
