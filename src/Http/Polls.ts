import * as Cookies from "@effect/platform/Cookies"
import { Clock, Effect, Either, Option } from "effect"
import { randomBytes } from "node:crypto"
import type { IncomingMessage, ServerResponse } from "node:http"
import { isOpen, PollNotFound, type PollDefinition, type PollId } from "../Domain.js"
import type { FeedShape } from "../Feed.js"
import * as Page from "../Page.js"
import { define, organiserKey, type PollsShape } from "../Polls.js"
import { bearerToken, cookie, parseJson, parsePollDraft, parsePollId } from "./Decode.js"
import type { Refusal } from "./Errors.js"
import { fromError, type Reply, reply } from "./Reply.js"

const pollBody = (poll: PollDefinition, now: number) => ({ ...poll, open: isOpen(poll, now) })

const orReply = (effect: Effect.Effect<Reply, Refusal>) => Effect.catchAll(effect, (e) => Effect.succeed(fromError(e)))

/** Defining, reading and closing polls. */
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

  return { createPoll, getPoll, closePoll }
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
