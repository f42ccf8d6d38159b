import { Context, DateTime, Duration, Effect, Layer, Option } from "effect"
import type { PollDefinition, PollDraft, PollId, StoreUnavailable, VoterId } from "./Domain.js"
import { PollExists, PollNotFound } from "./Domain.js"
import * as TtlCache from "./TtlCache.js"

/** Poll definitions and the voters who have voted, kept beside the counts (same node, same hash tag). */
export interface PollsShape {
  readonly create: (poll: PollDefinition) => Effect.Effect<PollDefinition, PollExists | StoreUnavailable>
  /** `fresh`: read past any cache (live streams do, so a change made elsewhere is not hidden). */
  readonly get: (pollId: PollId, fresh?: boolean) => Effect.Effect<Option.Option<PollDefinition>, StoreUnavailable>
  readonly close: (pollId: PollId) => Effect.Effect<PollDefinition, PollNotFound | StoreUnavailable>
  /**
   * False when this instance knows the poll is not defined, without asking anyone (`get` may still find it: a
   * definition announced a moment ago). Lets the definition cache stay out of the way of ad-hoc votes.
   */
  readonly mayBeDefined: (pollId: PollId) => boolean
  /** Records that `voterId` voted on the poll; false if it had already (the check and the write are one step). */
  readonly claimVoter: (pollId: PollId, voterId: VoterId) => Effect.Effect<boolean, StoreUnavailable>
  /** Undoes a claim whose vote was then refused, so the voter may try again. */
  readonly releaseVoter: (pollId: PollId, voterId: VoterId) => Effect.Effect<void, StoreUnavailable>
}

export class Polls extends Context.Tag("livepoll/Polls")<Polls, PollsShape>() {}

export const define = (draft: PollDraft, id: PollId, now: Date): PollDefinition => ({
  id,
  question: draft.question,
  options: draft.options,
  one_vote_per_voter: draft.one_vote_per_voter,
  closes_at: draft.closes_at === undefined ? null : DateTime.formatIso(draft.closes_at),
  closed: false,
  created_at: now.toISOString()
})

export const makeMemory = Effect.sync((): PollsShape => {
  const polls = new Map<PollId, PollDefinition>()
  const voters = new Map<PollId, Set<VoterId>>()
  return {
    create: (poll) =>
      Effect.suspend(() => {
        if (polls.has(poll.id)) return new PollExists({ pollId: poll.id })
        polls.set(poll.id, poll)
        return Effect.succeed(poll)
      }),
    get: (pollId) => Effect.sync(() => Option.fromNullable(polls.get(pollId))),
    mayBeDefined: (pollId) => polls.has(pollId),
    close: (pollId) =>
      Effect.suspend(() => {
        const poll = polls.get(pollId)
        if (poll === undefined) return new PollNotFound({ pollId })
        const closed = { ...poll, closed: true }
        polls.set(pollId, closed)
        return Effect.succeed(closed)
      }),
    claimVoter: (pollId, voterId) =>
      Effect.sync(() => {
        let set = voters.get(pollId)
        if (set === undefined) voters.set(pollId, (set = new Set()))
        if (set.has(voterId)) return false
        set.add(voterId)
        return true
      }),
    releaseVoter: (pollId, voterId) => Effect.sync(() => void voters.get(pollId)?.delete(voterId))
  }
})

/**
 * Definitions are read on every vote of a defined poll, so they are cached briefly. Only definitions are cached,
 * never "no such poll" (a poll may be defined at any moment). The instance that closes a poll drops its copy at
 * once; the others when told over pub/sub (`invalidate`), or at the latest after `ttl`. A poll's `closes_at` is
 * checked against the clock on every vote.
 */
export const withCache = (polls: PollsShape, ttl: Duration.DurationInput = Duration.seconds(1)) =>
  Effect.gen(function* () {
    const ttlMs = Duration.toMillis(ttl)
    const cache = yield* TtlCache.make({
      capacity: 100_000,
      lookup: (pollId: PollId) => polls.get(pollId),
      ttlMs: (found) => (Option.isSome(found) ? ttlMs : 0)
    })
    const invalidate = (pollId: PollId) => Effect.sync(() => cache.invalidate(pollId))
    const shape: PollsShape & { readonly invalidate: (pollId: PollId) => Effect.Effect<void> } = {
      ...polls,
      invalidate,
      get: (pollId, fresh) =>
        fresh
          ? Effect.zipLeft(polls.get(pollId), invalidate(pollId))
          : !polls.mayBeDefined(pollId)
            ? polls.get(pollId)
            : Effect.map(cache.get(pollId), (found) => found.value),
      create: (poll) => Effect.tap(polls.create(poll), () => invalidate(poll.id)),
      close: (pollId) => Effect.tap(polls.close(pollId), () => invalidate(pollId))
    }
    return shape
  })

export const layerMemory: Layer.Layer<Polls> = Layer.effect(
  Polls,
  Effect.flatMap(makeMemory, (p) => withCache(p))
)
