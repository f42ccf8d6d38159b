import { Context, Effect, Layer } from "effect"
import type { Health, PollId, OptionId, PollResults, StoreUnavailable, VoteError, VoterId } from "./Domain.js"
import { addCounts, AlreadyVoted, MAX_OPTIONS_PER_POLL, newCounts, TooManyOptions } from "./Domain.js"

/** Polls in one write-behind batch: the buffer seals no more, and a store may refuse more. */
export const MAX_POLLS_PER_BATCH = 500

/** Increments to apply together: poll -> option -> amount. */
export type Increments = ReadonlyMap<PollId, ReadonlyMap<OptionId, number>>

/**
 * A unit of write-behind work. The id makes applying it idempotent: a store that has seen the id
 * already must not apply the increments again.
 */
export interface Batch {
  readonly id: string
  readonly increments: Increments
}

/** An exact read: the counts, and which of the batches asked about the store had applied when it read them. */
export interface ExactResults extends PollResults {
  readonly appliedBatches: ReadonlyArray<string>
}

export interface VoteStoreShape {
  readonly vote: (pollId: PollId, optionId: OptionId) => Effect.Effect<void, VoteError>
  /**
   * A vote on a one-vote-per-voter poll: the voter's record and the count are made in one step, or neither is, so a
   * refused or timed-out vote never leaves a record behind that would turn the retry away. AlreadyVoted when the
   * voter has a record. Never buffered: the record is the decision, shared by every instance.
   */
  readonly voteOnce: (
    pollId: PollId,
    optionId: OptionId,
    voterId: VoterId
  ) => Effect.Effect<void, VoteError | AlreadyVoted>
  /** A poll's counts as a reader sees them: a cache on the way may answer, so they may lag by its lifetime. */
  readonly results: (pollId: PollId) => Effect.Effect<PollResults, StoreUnavailable>
  /**
   * A poll's counts as the store holds them now, past any cache, and which of `batchIds` (unconfirmed batches the
   * caller holds) the store had applied when it read them.
   */
  readonly exactResults: (
    pollId: PollId,
    batchIds: ReadonlyArray<string>
  ) => Effect.Effect<ExactResults, StoreUnavailable>
  /**
   * The option ids each of these polls has in the store, read together: a write-behind buffer learns the options of
   * the polls it meets for the first time (the 256-option cap) with one read for many polls, not one per poll.
   */
  readonly optionsOf: (
    pollIds: ReadonlyArray<PollId>
  ) => Effect.Effect<ReadonlyMap<PollId, ReadonlyArray<string>>, StoreUnavailable>
  /** Apply a batch exactly once: a batch whose id the store has seen already is a no-op. */
  readonly applyBatch: (batch: Batch) => Effect.Effect<void, StoreUnavailable>
  /**
   * The batch is confirmed and will never be sent again (its journal record says so): the store may drop what it
   * kept to recognise a repeat. Only where that is worth a command (a marker per poll, on Redis Cluster); the rest
   * let their one marker per batch expire.
   */
  readonly forgetBatch?: (batch: Batch) => Effect.Effect<void, StoreUnavailable>
  /** The node a poll lives on; write-behind keeps one queue per partition so one node's outage spares the others. */
  readonly partitionOf: (pollId: PollId) => string
  readonly health: Effect.Effect<Health>
}

/** The store the HTTP app talks to. */
export class VoteStore extends Context.Tag("livepoll/VoteStore")<VoteStore, VoteStoreShape>() {}

/** The store a decorator (cache, write-behind buffer) wraps. */
export class InnerStore extends Context.Tag("livepoll/InnerStore")<InnerStore, VoteStoreShape>() {}

/** Re-expose a store layer as the inner store of the next decorator. */
export const asInner = <E, R>(layer: Layer.Layer<VoteStore, E, R>): Layer.Layer<InnerStore, E, R> =>
  Layer.effect(InnerStore, VoteStore).pipe(Layer.provide(layer))

export const IN_MEMORY = "in_memory"

export const makeMemory = Effect.sync((): VoteStoreShape => {
  const polls = new Map<PollId, Map<OptionId, number>>()
  const appliedBatches = new Set<string>()
  const voters = new Map<PollId, Set<VoterId>>()
  const add = (pollId: PollId, optionId: OptionId, n: number) => {
    let options = polls.get(pollId)
    if (options === undefined) {
      options = new Map()
      polls.set(pollId, options)
    }
    options.set(optionId, (options.get(optionId) ?? 0) + n)
  }
  const countsOf = (pollId: PollId) => addCounts(newCounts(), polls.get(pollId))
  return {
    vote: (pollId: PollId, optionId: OptionId) =>
      Effect.suspend(() => {
        const options = polls.get(pollId)
        if (options !== undefined && !options.has(optionId) && options.size >= MAX_OPTIONS_PER_POLL) {
          return new TooManyOptions({ pollId })
        }
        add(pollId, optionId, 1)
        return Effect.void
      }),
    voteOnce: (pollId, optionId, voterId) =>
      Effect.suspend(() => {
        let voted = voters.get(pollId)
        if (voted === undefined) voters.set(pollId, (voted = new Set()))
        if (voted.has(voterId)) return new AlreadyVoted({ pollId })
        voted.add(voterId)
        add(pollId, optionId, 1)
        return Effect.void
      }),
    results: (pollId) => Effect.sync(() => ({ counts: countsOf(pollId), servedVia: IN_MEMORY })),
    exactResults: (pollId, batchIds) =>
      Effect.sync(() => ({
        counts: countsOf(pollId),
        servedVia: IN_MEMORY,
        appliedBatches: batchIds.filter((id) => appliedBatches.has(id))
      })),
    optionsOf: (pollIds) => Effect.sync(() => new Map(pollIds.map((p) => [p, [...(polls.get(p)?.keys() ?? [])]]))),
    applyBatch: (batch) =>
      Effect.sync(() => {
        if (appliedBatches.has(batch.id)) return
        appliedBatches.add(batch.id)
        for (const [pollId, options] of batch.increments) {
          for (const [optionId, n] of options) add(pollId, optionId, n)
        }
      }),
    partitionOf: () => IN_MEMORY,
    health: Effect.succeed({ nodes: [{ name: IN_MEMORY, reachable: true }], pendingVotes: 0 })
  }
})

export const layerMemory: Layer.Layer<VoteStore> = Layer.effect(VoteStore, makeMemory)
