import * as Cookies from "@effect/platform/Cookies"
import { Either, ParseResult, Schema } from "effect"
import type { IncomingMessage } from "node:http"
import { isPollId, isVoterId, PollDraft, PollId, VoteRequest, type VoterId, voteRequestOf } from "../Domain.js"
import { InvalidJson, InvalidPoll, InvalidPollId, InvalidRequest } from "./Errors.js"
import { fromError, type Reply } from "./Reply.js"

/**
 * JSON bodies nest at most this deep. Deeper ones are refused before parsing, so nothing that walks a value
 * recursively (the schema's error formatter, JSON.stringify) ever meets one: a few thousand levels overflow the stack.
 */
export const MAX_JSON_DEPTH = 64

// Bounded input only (a body within MAX_BODY_BYTES and MAX_JSON_DEPTH, a URL within Node's header limit): the
// formatter prints the refused value, recursively.
const describeParseError = (error: ParseResult.ParseError) =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    .map((issue) => (issue.path.length > 0 ? `${issue.path.join(".")}: ${issue.message}` : issue.message))
    .join("; ")

const decodePollId = Schema.decodeUnknownEither(PollId)
const decodeVoteRequest = Schema.decodeUnknownEither(VoteRequest, { onExcessProperty: "ignore" })
const decodeDraft = Schema.decodeUnknownEither(PollDraft, { onExcessProperty: "error", errors: "all" })

/** Never throws: an escape that does not decode (`%zz`, a broken UTF-8 sequence) leaves the text as sent. */
const safeDecodeURIComponent = (raw: string) => {
  if (!raw.includes("%")) return raw
  try {
    return decodeURIComponent(raw)
  } catch {
    return raw
  }
}

// Each check tries the parser-free test first (see Domain's textId); the schema runs only to say what is wrong.
export const parsePollId = (raw: string): Either.Either<PollId, Reply> => {
  const text = safeDecodeURIComponent(raw)
  if (isPollId(text)) return Either.right(text)
  return Either.mapLeft(decodePollId(text), (e) =>
    fromError(new InvalidPollId({ message: `poll_id ${describeParseError(e)}` }))
  )
}

export const parseVoteRequest = (json: unknown): Either.Either<VoteRequest, Reply> => {
  const body = voteRequestOf(json)
  if (body !== undefined) return Either.right(body)
  return Either.mapLeft(decodeVoteRequest(json), (e) =>
    fromError(new InvalidRequest({ message: describeParseError(e) }))
  )
}

export const parsePollDraft = (json: unknown): Either.Either<PollDraft, Reply> =>
  Either.mapLeft(decodeDraft(json), (e) => fromError(new InvalidPoll({ message: describeParseError(e) })))

/**
 * Whether the arrays and objects of `text` nest deeper than `max`, counted in one pass without recursion (brackets
 * inside strings do not count). Valid JSON needs two characters a level, so a short text (any usual vote) is not
 * scanned at all; invalid JSON may be miscounted, but JSON.parse refuses it anyway.
 */
export const nestsDeeperThan = (text: string, max: number): boolean => {
  if (text.length <= 2 * max) return false
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 0x5c) i++
      else if (c === 0x22) inString = false
    } else if (c === 0x22) inString = true
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true
    } else if (c === 0x5d || c === 0x7d) depth--
  }
  return false
}

const EMPTY = Either.left(fromError(new InvalidRequest({ message: "request body is empty; expected JSON" })))
const TOO_DEEP = Either.left(
  fromError(new InvalidJson({ message: `request body is nested deeper than ${MAX_JSON_DEPTH} levels` }))
)
const NOT_JSON = Either.left(fromError(new InvalidJson({ message: "request body is not valid JSON" })))

export const parseJson = (text: string): Either.Either<unknown, Reply> => {
  if (text.trim() === "") return EMPTY
  if (nestsDeeperThan(text, MAX_JSON_DEPTH)) return TOO_DEEP
  try {
    return Either.right(JSON.parse(text))
  } catch {
    return NOT_JSON
  }
}

/** A cookie of the request, by name (@effect/platform's parser: quoted and percent-encoded values decoded). */
export const cookie = (req: IncomingMessage, name: string): string | undefined => {
  const header = req.headers.cookie
  return header === undefined ? undefined : Cookies.parseHeader(header)[name]
}

/** The voter: `voter_id` in the body, else the `voter` cookie the page sets. */
export const voterOf = (req: IncomingMessage, fromBody: VoterId | undefined): VoterId | undefined => {
  if (fromBody !== undefined) return fromBody
  const fromCookie = cookie(req, "voter")
  if (fromCookie === undefined) return undefined
  return isVoterId(fromCookie) ? fromCookie : undefined
}

/** The token of an `Authorization: Bearer <token>` header (the scheme in any case), or undefined. */
export const bearerToken = (header: string | undefined): string | undefined => {
  const match = header === undefined ? null : /^bearer[ \t]+(\S+)[ \t]*$/i.exec(header)
  return match === null ? undefined : match[1]
}
