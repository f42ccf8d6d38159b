import { Effect, Either } from "effect"
import type { IncomingMessage } from "node:http"
import type { PollId, VoterId } from "../Domain.js"
import type { FeedShape } from "../Feed.js"
import type { MetricsShape } from "../Metrics.js"
import type { RateLimited } from "../RateLimit.js"
import * as Voting from "../Voting.js"
import { parseJson, parsePollId, parseVoteRequest, voterOf } from "./Decode.js"
import { fromError, type Reply, reply } from "./Reply.js"

const tallyBody = (pollId: string, t: Voting.Tally) =>
  t.poll === undefined
    ? { poll_id: pollId, results: t.counts, served_via: t.servedVia }
    : {
        poll_id: pollId,
        results: t.counts,
        served_via: t.servedVia,
        question: t.poll.question,
        options: t.poll.options.map((o) => ({ id: o.id, label: o.label, votes: t.counts[o.id] ?? 0 })),
        one_vote_per_voter: t.poll.one_vote_per_voter,
        closes_at: t.poll.closes_at,
        closed: t.poll.closed
      }

/** Voting and results: the hot path, plain chains only. Every vote is counted as accepted or refused (by its code). */
export const make = (voting: ReturnType<typeof Voting.make>, feed: FeedShape, metrics: MetricsShape) => {
  const refused = (r: Reply) => {
    metrics.voteRefused((r.body as { readonly error: string }).error)
    return Effect.succeed(r)
  }
  const failed = (e: Voting.CastError | RateLimited) => {
    metrics.voteRefused(e.code)
    return fromError(e)
  }
  /** `admit`: the vote's rate limits, checked once its voter is known (none when limits are off). */
  const vote = (
    rawPollId: string,
    text: string,
    req?: IncomingMessage,
    admit?: (voter: VoterId | undefined) => Effect.Effect<void, RateLimited>
  ): Effect.Effect<Reply> => {
    const pollId = parsePollId(rawPollId)
    if (Either.isLeft(pollId)) return refused(pollId.left)
    const json = parseJson(text)
    if (Either.isLeft(json)) return refused(json.left)
    const body = parseVoteRequest(json.right)
    if (Either.isLeft(body)) return refused(body.left)
    const { option_id, voter_id } = body.right
    const voter = req === undefined ? voter_id : voterOf(req, voter_id)
    const id = pollId.right
    // flatMap and match, each one step: `zipLeft` and `pipe` would add steps and allocations to every vote.
    const counted = Effect.flatMap(voting.cast(id, option_id, voter), () => feed.local(id))
    return Effect.match(admit === undefined ? counted : Effect.flatMap(admit(voter), () => counted), {
      onFailure: failed,
      onSuccess: () => {
        metrics.voteAccepted()
        return reply(200, { poll_id: id, option_id })
      }
    })
  }

  const tally = (pollId: PollId) => Effect.map(voting.tally(pollId), (t) => tallyBody(pollId, t))
  const tallyExact = (pollId: PollId) => Effect.map(voting.tallyExact(pollId), (t) => tallyBody(pollId, t))

  const results = (rawPollId: string): Effect.Effect<Reply> => {
    const pollId = parsePollId(rawPollId)
    if (Either.isLeft(pollId)) return Effect.succeed(pollId.left)
    const id = pollId.right
    return Effect.match(voting.tally(id), { onFailure: fromError, onSuccess: (t) => reply(200, tallyBody(id, t)) })
  }

  return { vote, results, tally, tallyExact }
}
