import { type Clock, Effect, Option } from "effect"
import type {
  DefinitionLost,
  OptionId,
  PollDefinition,
  PollId,
  PollResults,
  StoreUnavailable,
  VoteError,
  VoterId
} from "./Domain.js"
import { AlreadyVoted, isOpen, newCounts, PollClosed, UnknownOption, VoterRequired } from "./Domain.js"
import type { PollsShape } from "./Polls.js"
import type { VoteStoreShape } from "./VoteStore.js"

export type CastError = VoteError | PollClosed | UnknownOption | AlreadyVoted | VoterRequired | DefinitionLost

export interface Tally {
  readonly counts: Readonly<Record<string, number>>
  readonly servedVia: string
  readonly poll: PollDefinition | undefined
}

/**
 * Votes and tallies across a poll's rules and the vote store. `clock`: the runtime's, taken once (as the caches take
 * theirs), so a vote reads the time without a service lookup.
 */
export const make = (polls: PollsShape, store: VoteStoreShape, clock: Clock.Clock) => {
  // A chain of plain steps rather than a generator: this runs on every vote of a defined poll.
  const castDefined = (
    poll: PollDefinition,
    optionId: OptionId,
    voterId: VoterId | undefined
  ): Effect.Effect<void, CastError> =>
    Effect.suspend((): Effect.Effect<void, CastError> => {
      const now = clock.unsafeCurrentTimeMillis()
      const pollId = poll.id
      if (!isOpen(poll, now)) return new PollClosed({ pollId })
      if (!poll.options.some((o) => o.id === optionId)) return new UnknownOption({ pollId, optionId })
      if (!poll.one_vote_per_voter) return store.vote(pollId, optionId)
      if (voterId === undefined) return new VoterRequired({ pollId })
      return store.voteOnce(pollId, optionId, voterId)
    })

  /**
   * One vote. An ad-hoc poll (never defined) just counts it. A defined poll checks that it is open and knows the
   * option; one vote per voter goes to the store's `voteOnce`, which records the voter and counts in one step: the
   * record is the decision, so it holds across instances and in every stage, buffered ones included.
   */
  const cast = (pollId: PollId, optionId: OptionId, voterId: VoterId | undefined): Effect.Effect<void, CastError> =>
    Effect.flatMap(polls.get(pollId), (found) =>
      Option.isNone(found) ? store.vote(pollId, optionId) : castDefined(found.value, optionId, voterId)
    )

  const tallyOf = (
    definition: Effect.Effect<Option.Option<PollDefinition>, StoreUnavailable | DefinitionLost>,
    counts: Effect.Effect<PollResults, StoreUnavailable>
  ): Effect.Effect<Tally, StoreUnavailable | DefinitionLost> =>
    // One after the other: for an ad-hoc poll the first answers from memory, and forking costs more than it saves.
    Effect.flatMap(definition, (defined) =>
      Effect.map(counts, (r): Tally => {
        if (Option.isNone(defined)) return { counts: r.counts, servedVia: r.servedVia, poll: undefined }
        const counts = newCounts()
        for (const option of defined.value.options) counts[option.id] = r.counts[option.id] ?? 0
        return { counts, servedVia: r.servedVia, poll: defined.value }
      })
    )

  /** A poll's counts as readers see them (caches may answer); a defined poll lists every option in its own order. */
  const tally = (pollId: PollId) => tallyOf(polls.get(pollId), store.results(pollId))

  /**
   * The same past every cache, for live streams: a change made on another instance must not hide behind this
   * instance's snapshot.
   */
  const tallyExact = (pollId: PollId) => tallyOf(polls.getExact(pollId), store.exactResults(pollId, []))

  return { cast, tally, tallyExact }
}
