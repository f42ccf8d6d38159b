import { Effect, Layer } from "effect"
import type { Redis } from "ioredis"
import type { OptionId, PollId, VoteError } from "../Domain.js"
import { AlreadyVoted, MAX_OPTIONS_PER_POLL, newCounts, StoreUnavailable, TooManyOptions } from "../Domain.js"
import * as RedisClient from "../RedisClient.js"
import type { VoteStoreShape } from "../VoteStore.js"
import { VoteStore } from "../VoteStore.js"
import { MAX_POLLS_PER_BATCH, type Batch } from "../VoteStore.js"

/** The contract's key layout; the braces are a Redis Cluster hash tag. */
export const countsKey = (pollId: string) => `poll:{${pollId}}:counts`
const batchKey = (batchId: string) => `livepoll:batch:${batchId}`

/** The voters of a one-vote-per-voter poll, beside its counts (same hash tag, same node). */
export const votersKey = (pollId: string) => `poll:{${pollId}}:voters`

/** How long a node remembers an applied batch id; far longer than any retry of that batch can take. */
export const BATCH_MEMORY_SECONDS = 24 * 60 * 60

// KEYS: the counts hash. ARGV: option, option cap, deadline. -1: the poll is at its cap; -2: arrived too late.
export const VOTE_SCRIPT = `${RedisClient.fence(3)}
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HLEN', KEYS[1]) < tonumber(ARGV[2]) then
  return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
end
return -1`

// KEYS: the counts hash, the voters set. ARGV: option, voter, deadline. The record and the count, or neither.
export const VOTE_ONCE_SCRIPT = `${RedisClient.fence(3)}
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1`

// KEYS: batch marker, then one counts hash per poll. ARGV: marker ttl, then per poll: n, field1, amount1, ...
const APPLY_BATCH_SCRIPT = `
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local a = 2
for k = 2, #KEYS do
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    redis.call('HINCRBY', KEYS[k], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
end
return 1`

// KEYS: the counts hash, then one batch marker per batch asked about. Reads both in one step, so the answer
// "which of these batches are in these counts" is exact.
export const RESULTS_SCRIPT = `
local applied = {}
for k = 2, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then applied[#applied + 1] = k - 1 end
end
return { redis.call('HGETALL', KEYS[1]), applied }`

// KEYS: counts hashes. The field names of each, in order.
const OPTIONS_SCRIPT = `
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HKEYS', KEYS[i]) end
return out`

/** The scripts on one poll's keys, the same on a node and on a cluster (each call keeps to the poll's slot). */
export interface PollScripts {
  livepollVote(key: string, option: string, max: number, deadline: number): Promise<number>
  livepollVoteOnce(counts: string, voters: string, option: string, voter: string, deadline: number): Promise<number>
  livepollResults(numKeys: number, ...keys: Array<string>): Promise<[Array<string>, Array<number>]>
  livepollOptions(numKeys: number, ...keys: Array<string>): Promise<Array<Array<string>>>
}

/** Defines the `PollScripts` on a client (a node's or a cluster's). */
export const definePollScripts = <C extends Pick<Redis, "defineCommand">>(client: C): C & PollScripts => {
  client.defineCommand("livepollVote", { numberOfKeys: 1, lua: VOTE_SCRIPT })
  client.defineCommand("livepollVoteOnce", { numberOfKeys: 2, lua: VOTE_ONCE_SCRIPT })
  client.defineCommand("livepollResults", { lua: RESULTS_SCRIPT })
  client.defineCommand("livepollOptions", { lua: OPTIONS_SCRIPT })
  return client as C & PollScripts
}

interface LivepollRedis extends Redis, PollScripts {
  livepollApplyBatch(numKeys: number, ...args: Array<string | number>): Promise<number>
}

export type RedisOptions = RedisClient.RedisNode

const withScripts = (client: Redis): LivepollRedis => {
  client.defineCommand("livepollApplyBatch", { lua: APPLY_BATCH_SCRIPT })
  return definePollScripts(client) as LivepollRedis
}

const batchArgs = (batch: Batch): Array<string | number> => {
  const keys: Array<string> = [batchKey(batch.id)]
  const argv: Array<string | number> = [BATCH_MEMORY_SECONDS]
  for (const [pollId, options] of batch.increments) {
    keys.push(countsKey(pollId))
    argv.push(options.size)
    for (const [optionId, n] of options) argv.push(optionId, n)
  }
  return [keys.length, ...keys, ...argv]
}

export const toCounts = (flat: ReadonlyArray<string>): Record<string, number> => {
  const counts = newCounts()
  for (let i = 0; i + 1 < flat.length; i += 2) counts[flat[i]!] = Number(flat[i + 1])
  return counts
}

/**
 * Votes and reads of one poll, each a script or command on the keys of its hash tag: the same on a node and on a
 * cluster. `deadline` is the fence of a vote on the poll's node (0: none); `servedVia` names the reads and the
 * refusal of a vote that came too late; `batchKey` is the marker of an applied batch.
 */
export const pollCommands = (options: {
  readonly client: PollScripts & Pick<Redis, "hgetall">
  /** For one-vote-per-voter votes: never buffered, so concurrent ones share a round trip. */
  readonly pipelined: PollScripts
  readonly call: ReturnType<typeof RedisClient.caller>
  readonly servedVia: string
  readonly deadline: (pollId: PollId) => number
  readonly batchKey: (pollId: PollId, batchId: string) => string
}): Pick<VoteStoreShape, "vote" | "voteOnce" | "results" | "exactResults"> => {
  const { batchKey, call, client, deadline, pipelined, servedVia } = options
  const tooLate = new StoreUnavailable({ node: servedVia, reason: "the vote reached the node after its deadline" })
  const results = (pollId: PollId) =>
    Effect.map(
      call("results", () => client.hgetall(countsKey(pollId))),
      (raw) => {
        const counts = newCounts()
        for (const field of Object.keys(raw)) counts[field] = Number(raw[field])
        return { counts, servedVia }
      }
    )
  return {
    vote: (pollId: PollId, optionId: OptionId) =>
      Effect.flatMap(
        call("vote", () => client.livepollVote(countsKey(pollId), optionId, MAX_OPTIONS_PER_POLL, deadline(pollId))),
        (result): Effect.Effect<void, VoteError> =>
          result === -1 ? new TooManyOptions({ pollId }) : result === -2 ? tooLate : Effect.void
      ),
    voteOnce: (pollId, optionId, voterId) =>
      Effect.flatMap(
        call("vote", () =>
          pipelined.livepollVoteOnce(countsKey(pollId), votersKey(pollId), optionId, voterId, deadline(pollId))
        ),
        (result): Effect.Effect<void, VoteError | AlreadyVoted> =>
          result === 0 ? new AlreadyVoted({ pollId }) : result === -2 ? tooLate : Effect.void
      ),
    results,
    exactResults: (pollId: PollId, batchIds: ReadonlyArray<string>) =>
      batchIds.length === 0
        ? Effect.map(results(pollId), (r) => ({ ...r, appliedBatches: [] }))
        : Effect.map(
            call("results", () =>
              client.livepollResults(
                1 + batchIds.length,
                countsKey(pollId),
                ...batchIds.map((id) => batchKey(pollId, id))
              )
            ),
            ([flat, applied]) => ({
              counts: toCounts(flat),
              servedVia,
              appliedBatches: applied.map((i) => batchIds[i - 1]!)
            })
          )
  }
}

export const make = Effect.fn("VoteStore.redis.make")(function* (options: RedisOptions) {
  const client = withScripts(yield* RedisClient.acquire(options))
  // One-vote-per-voter votes go to Redis one by one, whatever the stage: concurrent ones share a round trip.
  const pipelined = withScripts(yield* RedisClient.acquire(options, { autoPipelining: true }))
  const clock = yield* RedisClient.serverClock(client, RedisClient.commandTimeoutOf(options))
  const call = RedisClient.caller(options)

  const store: VoteStoreShape = {
    ...pollCommands({
      client,
      pipelined,
      call,
      servedVia: options.name,
      deadline: clock.deadline,
      batchKey: (_, batchId) => batchKey(batchId)
    }),
    optionsOf: (pollIds) =>
      pollIds.length === 0
        ? Effect.succeed(new Map())
        : Effect.map(
            call("read options", () => client.livepollOptions(pollIds.length, ...pollIds.map(countsKey))),
            (lists) => new Map(pollIds.map((p, i) => [p, lists[i] ?? []]))
          ),
    applyBatch: Effect.fn("VoteStore.redis.applyBatch")(function* (batch: Batch) {
      if (batch.increments.size > MAX_POLLS_PER_BATCH) {
        return yield* Effect.dieMessage(
          `batch ${batch.id} has ${batch.increments.size} polls; at most ${MAX_POLLS_PER_BATCH}`
        )
      }
      yield* call(`apply batch ${batch.id}`, () => client.livepollApplyBatch(...(batchArgs(batch) as [number])))
    }),
    partitionOf: () => options.name,
    health: call("ping", () => client.ping()).pipe(
      Effect.match({ onFailure: () => false, onSuccess: () => true }),
      Effect.map((ok) => ({ nodes: [{ name: options.name, reachable: ok }], pendingVotes: 0 }))
    )
  }
  return store
})

export const layer = (options: RedisOptions): Layer.Layer<VoteStore> => Layer.scoped(VoteStore, make(options))
