import { Effect, Layer } from "effect"
import type { Redis } from "ioredis"
import type { OptionId, PollId, VoteError, VoterId } from "../Domain.js"
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

// The keys of a move between rings (`npm run reshard`), as the stores that know both rings read them.
/** On the node a poll left: where it went, `<node> <move id>`. */
export const movedKey = (pollId: string) => `poll:{${pollId}}:moved`
/** A frozen poll's keys, on the node it is leaving, until the destination holds them. */
export const stagedKey = (pollId: string, part: string) => `poll:{${pollId}}:moving:${part}`
/** On the destination: this move's data is in (set in the script that merges it). */
export const mergedKey = (pollId: string, moveId: string) => `poll:{${pollId}}:merged:${moveId}`
/** On the destination, from before the freeze until the merge: the poll's voters are still arriving. */
export const incomingKey = (pollId: string) => `poll:{${pollId}}:incoming`
/** On a node of the old ring, from the start of an online reshard: a poll it holds nothing of has moved. */
export const MIGRATING_KEY = "livepoll:migrating"
/** On the destination, a batch part sent on by the old owner: one marker per poll, as the old owner's marker is. */
export const pollBatchKey = (pollId: string, batchId: string) => `poll:{${pollId}}:batch:${batchId}`

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

// The online growth's check, on the poll's old owner: the poll has moved when its tombstone is there, or when the
// reshard has begun and this node holds nothing of it (a poll new to both rings: the new ring holds it).
// KEYS[1..6]: counts, voters, tombstone, migrating, staged counts, staged voters.
const MOVED = `(redis.call('EXISTS', KEYS[3]) == 1 or (redis.call('EXISTS', KEYS[4]) == 1 and
  redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[5], KEYS[6]) == 0))`

// KEYS: the moved check's 6. ARGV: option, option cap, deadline. -3: moved, nothing done.
const VOTE_UNLESS_MOVED_SCRIPT = `${RedisClient.fence(3)}
if ${MOVED} then return -3 end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HLEN', KEYS[1]) < tonumber(ARGV[2]) then
  return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
end
return -1`

// KEYS: the moved check's 6. ARGV: option, voter, deadline. -3: moved, nothing done.
const VOTE_ONCE_UNLESS_MOVED_SCRIPT = `${RedisClient.fence(3)}
if ${MOVED} then return -3 end
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1`

// On the new owner. KEYS: counts, voters, incoming. ARGV: option, voter, deadline. -4: the voters are still arriving.
const VOTE_ONCE_ARRIVING_SCRIPT = `${RedisClient.fence(3)}
if redis.call('EXISTS', KEYS[3]) == 1 then return -4 end
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1`

// On the old owner. KEYS: batch marker, migrating, then per poll its counts, and for a checked poll also its voters,
// staged counts, staged voters and tombstone. ARGV: marker ttl, then per poll: checked (0/1), id, n, field1, amount1...
// Answers the ids of the checked polls that have moved: those are not applied, and the marker remembers them, so a
// retry of the batch is told them again and sends them on again.
const APPLY_BATCH_UNLESS_MOVED_SCRIPT = `
local seen = redis.call('GET', KEYS[1])
if seen then
  local ids = {}
  for id in string.gmatch(string.sub(seen, 3), '%S+') do ids[#ids + 1] = id end
  return ids
end
local sent = {}
local k = 3
local a = 2
while k <= #KEYS do
  local checked = ARGV[a] == '1'
  local id = ARGV[a + 1]
  local n = tonumber(ARGV[a + 2])
  a = a + 3
  local counts = KEYS[k]
  local skip = false
  if checked then
    local voters, stagedCounts, stagedVoters, tombstone = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
    k = k + 5
    skip = redis.call('EXISTS', tombstone) == 1 or
      (redis.call('EXISTS', KEYS[2]) == 1 and redis.call('EXISTS', counts, voters, stagedCounts, stagedVoters) == 0)
  else
    k = k + 1
  end
  if skip then
    sent[#sent + 1] = id
  else
    for _ = 1, n do
      redis.call('HINCRBY', counts, ARGV[a], ARGV[a + 1])
      a = a + 2
    end
  end
  if skip then a = a + 2 * n end
end
redis.call('SET', KEYS[1], '1 ' .. table.concat(sent, ' '), 'EX', ARGV[1])
return sent`

// On the new owner, a part the old owner sent on. KEYS: per poll its batch marker, its counts. ARGV: marker ttl,
// then per poll: n, field1, amount1, ...
const APPLY_REDIRECTED_SCRIPT = `
local a = 2
for k = 1, #KEYS, 2 do
  local n = tonumber(ARGV[a])
  a = a + 1
  local fresh = redis.call('SET', KEYS[k], '1', 'NX', 'EX', ARGV[1])
  for _ = 1, n do
    if fresh then redis.call('HINCRBY', KEYS[k + 1], ARGV[a], ARGV[a + 1]) end
    a = a + 2
  end
end
return 1`

// On the old owner. KEYS: the moved check's 6, then one node-wide batch marker per batch asked about. ARGV: poll id.
// Answers whether the poll has moved, its counts here (the staged ones when it has), its tombstone, and which batches
// were applied to it here (a marker that does not name it as sent on).
const READ_UNLESS_MOVED_SCRIPT = `
local applied = {}
for k = 7, #KEYS do
  local v = redis.call('GET', KEYS[k])
  if v and not string.find(' ' .. string.sub(v, 3) .. ' ', ' ' .. ARGV[1] .. ' ', 1, true) then
    applied[#applied + 1] = k - 6
  end
end
if not ${MOVED} then return { 0, redis.call('HGETALL', KEYS[1]), applied, false } end
return { 1, redis.call('HGETALL', KEYS[5]), applied, redis.call('GET', KEYS[3]) or false }`

// On the new owner. KEYS: counts, the merged marker of the move read on the old owner, then one per-poll batch marker
// per batch asked about. ARGV: the move id ('' none). In one step: the counts, whether the staged counts are in them.
const READ_ARRIVED_SCRIPT = `
local applied = {}
for k = 3, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then applied[#applied + 1] = k - 2 end
end
local merged = 0
if ARGV[1] ~= '' and redis.call('EXISTS', KEYS[2]) == 1 then merged = 1 end
return { redis.call('HGETALL', KEYS[1]), merged, applied }`

/** A write that reached `node` after its caller had given up on it (the fence): not applied, a 503. */
const tooLateOn = (node: string) =>
  new StoreUnavailable({ node, reason: "the vote reached the node after its deadline" })

/** A vote script's refusal: -1 the poll is at its option cap, -2 the vote came too late; undefined: it counted. */
const voteRefusal = (result: number, pollId: PollId, tooLate: StoreUnavailable): VoteError | undefined =>
  result === -1 ? new TooManyOptions({ pollId }) : result === -2 ? tooLate : undefined

/** A voter script's refusal: 0 the voter has voted, -2 the vote came too late; undefined: it counted. */
const voterRefusal = (
  result: number,
  pollId: PollId,
  tooLate: StoreUnavailable
): VoteError | AlreadyVoted | undefined =>
  result === 0 ? new AlreadyVoted({ pollId }) : result === -2 ? tooLate : undefined

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
  livepollVoteUnlessMoved(...args: Array<string | number>): Promise<number>
  livepollVoteOnceUnlessMoved(...args: Array<string | number>): Promise<number>
  livepollVoteOnceArriving(...args: Array<string | number>): Promise<number>
  livepollApplyBatchUnlessMoved(numKeys: number, ...args: Array<string | number>): Promise<Array<string>>
  livepollApplyRedirected(numKeys: number, ...args: Array<string | number>): Promise<number>
  livepollReadUnlessMoved(
    numKeys: number,
    ...args: Array<string>
  ): Promise<[number, Array<string>, Array<number>, string | null]>
  livepollReadArrived(numKeys: number, ...args: Array<string>): Promise<[Array<string>, number, Array<number>]>
}

export type RedisOptions = RedisClient.RedisNode

const withScripts = (client: Redis): LivepollRedis => {
  client.defineCommand("livepollApplyBatch", { lua: APPLY_BATCH_SCRIPT })
  client.defineCommand("livepollVoteUnlessMoved", { numberOfKeys: 6, lua: VOTE_UNLESS_MOVED_SCRIPT })
  client.defineCommand("livepollVoteOnceUnlessMoved", { numberOfKeys: 6, lua: VOTE_ONCE_UNLESS_MOVED_SCRIPT })
  client.defineCommand("livepollVoteOnceArriving", { numberOfKeys: 3, lua: VOTE_ONCE_ARRIVING_SCRIPT })
  client.defineCommand("livepollApplyBatchUnlessMoved", { lua: APPLY_BATCH_UNLESS_MOVED_SCRIPT })
  client.defineCommand("livepollApplyRedirected", { lua: APPLY_REDIRECTED_SCRIPT })
  client.defineCommand("livepollReadUnlessMoved", { lua: READ_UNLESS_MOVED_SCRIPT })
  client.defineCommand("livepollReadArrived", { lua: READ_ARRIVED_SCRIPT })
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
 * cluster. `fenced` sends a vote with the fence of the poll's node (RedisClient.ServerClock); `servedVia` names the
 * reads and the refusal of a vote that came too late; `batchKey` is the marker of an applied batch.
 */
export const pollCommands = (options: {
  readonly client: PollScripts & Pick<Redis, "hgetall">
  readonly call: ReturnType<typeof RedisClient.caller>
  readonly servedVia: string
  readonly fenced: <A>(pollId: PollId, send: (deadline: number) => Promise<A>) => Promise<A>
  readonly batchKey: (pollId: PollId, batchId: string) => string
}): Pick<VoteStoreShape, "vote" | "voteOnce" | "results" | "exactResults"> => {
  const { batchKey, call, client, fenced, servedVia } = options
  const tooLate = tooLateOn(servedVia)
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
        call("vote", () =>
          fenced(pollId, (deadline) => client.livepollVote(countsKey(pollId), optionId, MAX_OPTIONS_PER_POLL, deadline))
        ),
        (result): Effect.Effect<void, VoteError> => voteRefusal(result, pollId, tooLate) ?? Effect.void
      ),
    voteOnce: (pollId, optionId, voterId) =>
      Effect.flatMap(
        call("vote", () =>
          fenced(pollId, (deadline) =>
            client.livepollVoteOnce(countsKey(pollId), votersKey(pollId), optionId, voterId, deadline)
          )
        ),
        (result): Effect.Effect<void, VoteError | AlreadyVoted> => voterRefusal(result, pollId, tooLate) ?? Effect.void
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

/** The moved check's keys of a poll (see MOVED). */
const movedCheckKeys = (pollId: string) => [
  countsKey(pollId),
  votersKey(pollId),
  movedKey(pollId),
  MIGRATING_KEY,
  stagedKey(pollId, "counts"),
  stagedKey(pollId, "voters")
]

/** What the old owner answers of a poll while the ring grows: its counts here, or that it moved and what it left. */
export type ReadUnlessMoved =
  | { readonly moved: false; readonly counts: Record<string, number>; readonly appliedBatches: ReadonlyArray<string> }
  | {
      readonly moved: true
      /** The counts frozen here, not yet merged on the new owner, or merged already (the tombstone's move). */
      readonly staged: Record<string, number>
      readonly moveId: string | undefined
      readonly appliedBatches: ReadonlyArray<string>
    }

/**
 * A node's side of an online reshard (`REDIS_NODES_NEXT`), for the polls whose owner differs between the two rings:
 * on the old owner, each write and read first checks whether the poll has moved, and if so does nothing and says so;
 * on the new owner, what the old one sent on.
 */
export interface Growth {
  /** true: moved, nothing done. */
  readonly voteUnlessMoved: (pollId: PollId, optionId: OptionId) => Effect.Effect<boolean, VoteError>
  readonly voteOnceUnlessMoved: (
    pollId: PollId,
    optionId: OptionId,
    voterId: VoterId
  ) => Effect.Effect<boolean, VoteError | AlreadyVoted>
  /** A voteOnce on the new owner: 503 while the poll's voters are still arriving from the old one. */
  readonly voteOnceArriving: (
    pollId: PollId,
    optionId: OptionId,
    voterId: VoterId
  ) => Effect.Effect<void, VoteError | AlreadyVoted>
  /** Applies the batch but for the `checked` polls that moved, and answers those (the same on every retry). */
  readonly applyBatchUnlessMoved: (
    batch: Batch,
    checked: (pollId: PollId) => boolean
  ) => Effect.Effect<ReadonlyArray<PollId>, StoreUnavailable>
  /** A part sent on by the old owner, under one marker per poll. */
  readonly applyRedirected: (batch: Batch) => Effect.Effect<void, StoreUnavailable>
  readonly readUnlessMoved: (
    pollId: PollId,
    batchIds: ReadonlyArray<string>
  ) => Effect.Effect<ReadUnlessMoved, StoreUnavailable>
  /** On the new owner, in one step: its counts, whether `moveId`'s staged counts are in them, the batches sent on. */
  readonly readArrived: (
    pollId: PollId,
    moveId: string | undefined,
    batchIds: ReadonlyArray<string>
  ) => Effect.Effect<
    { counts: Record<string, number>; merged: boolean; appliedBatches: ReadonlyArray<string> },
    StoreUnavailable
  >
  /** The option ids of each poll here, counting its staged counts. */
  readonly optionsWithStaged: (
    pollIds: ReadonlyArray<PollId>
  ) => Effect.Effect<ReadonlyMap<PollId, ReadonlyArray<string>>, StoreUnavailable>
}

/** A node's store, and its side of an online reshard. */
export const makeNode = Effect.fn("VoteStore.redis.makeNode")(function* (options: RedisOptions) {
  const client = withScripts(yield* RedisClient.acquire(options))
  const clock = yield* RedisClient.serverClock(client, RedisClient.commandTimeoutOf(options))
  const call = RedisClient.caller(options)
  const store = storeOn(options, client, call, clock)
  const tooLate = tooLateOn(options.name)
  const arriving = new StoreUnavailable({ node: options.name, reason: "the poll's voters are still moving here" })
  const growth: Growth = {
    voteUnlessMoved: (pollId, optionId) =>
      Effect.flatMap(
        call("vote", () =>
          clock.fenced((deadline) =>
            client.livepollVoteUnlessMoved(...movedCheckKeys(pollId), optionId, MAX_OPTIONS_PER_POLL, deadline)
          )
        ),
        // -3: moved, nothing applied.
        (result): Effect.Effect<boolean, VoteError> =>
          result === -3 ? Effect.succeed(true) : (voteRefusal(result, pollId, tooLate) ?? Effect.succeed(false))
      ),
    voteOnceUnlessMoved: (pollId, optionId, voterId) =>
      Effect.flatMap(
        call("vote", () =>
          clock.fenced((deadline) =>
            client.livepollVoteOnceUnlessMoved(...movedCheckKeys(pollId), optionId, voterId, deadline)
          )
        ),
        (result): Effect.Effect<boolean, VoteError | AlreadyVoted> =>
          result === -3 ? Effect.succeed(true) : (voterRefusal(result, pollId, tooLate) ?? Effect.succeed(false))
      ),
    voteOnceArriving: (pollId, optionId, voterId) =>
      Effect.flatMap(
        call("vote", () =>
          clock.fenced((deadline) =>
            client.livepollVoteOnceArriving(
              countsKey(pollId),
              votersKey(pollId),
              incomingKey(pollId),
              optionId,
              voterId,
              deadline
            )
          )
        ),
        (result): Effect.Effect<void, VoteError | AlreadyVoted> =>
          result === -4 ? arriving : (voterRefusal(result, pollId, tooLate) ?? Effect.void)
      ),
    applyBatchUnlessMoved: (batch, checked) => {
      const keys: Array<string> = [batchKey(batch.id), MIGRATING_KEY]
      const argv: Array<string | number> = [BATCH_MEMORY_SECONDS]
      for (const [pollId, counts] of batch.increments) {
        const check = checked(pollId)
        keys.push(countsKey(pollId))
        if (check)
          keys.push(votersKey(pollId), stagedKey(pollId, "counts"), stagedKey(pollId, "voters"), movedKey(pollId))
        argv.push(check ? "1" : "0", pollId, counts.size)
        for (const [optionId, n] of counts) argv.push(optionId, n)
      }
      return Effect.map(
        call(`apply batch ${batch.id}`, () => client.livepollApplyBatchUnlessMoved(keys.length, ...keys, ...argv)),
        (ids) => {
          const sent = new Set(ids)
          return [...batch.increments.keys()].filter((pollId) => sent.has(pollId))
        }
      )
    },
    applyRedirected: (batch) => {
      const keys: Array<string> = []
      const argv: Array<string | number> = [BATCH_MEMORY_SECONDS]
      for (const [pollId, counts] of batch.increments) {
        keys.push(pollBatchKey(pollId, batch.id), countsKey(pollId))
        argv.push(counts.size)
        for (const [optionId, n] of counts) argv.push(optionId, n)
      }
      return Effect.asVoid(
        call(`apply batch ${batch.id} sent on`, () => client.livepollApplyRedirected(keys.length, ...keys, ...argv))
      )
    },
    readUnlessMoved: (pollId, batchIds) =>
      Effect.map(
        call("results", () =>
          client.livepollReadUnlessMoved(
            6 + batchIds.length,
            ...movedCheckKeys(pollId),
            ...batchIds.map(batchKey),
            pollId
          )
        ),
        ([moved, flat, applied, tombstone]): ReadUnlessMoved => {
          const appliedBatches = applied.map((i) => batchIds[i - 1]!)
          return moved === 1
            ? { moved: true, staged: toCounts(flat), moveId: tombstone?.split(" ")[1], appliedBatches }
            : { moved: false, counts: toCounts(flat), appliedBatches }
        }
      ),
    readArrived: (pollId, moveId, batchIds) =>
      Effect.map(
        call("results", () =>
          client.livepollReadArrived(
            2 + batchIds.length,
            countsKey(pollId),
            mergedKey(pollId, moveId ?? ""),
            ...batchIds.map((id) => pollBatchKey(pollId, id)),
            moveId ?? ""
          )
        ),
        ([flat, merged, applied]) => ({
          counts: toCounts(flat),
          merged: merged === 1,
          appliedBatches: applied.map((i) => batchIds[i - 1]!)
        })
      ),
    optionsWithStaged: (pollIds) =>
      pollIds.length === 0
        ? Effect.succeed(new Map())
        : Effect.map(
            call("read options", () =>
              client.livepollOptions(
                2 * pollIds.length,
                ...pollIds.map(countsKey),
                ...pollIds.map((p) => stagedKey(p, "counts"))
              )
            ),
            (lists) =>
              new Map(
                pollIds.map((p, i) => [p, [...new Set([...(lists[i] ?? []), ...(lists[pollIds.length + i] ?? [])])]])
              )
          )
  }
  return { store, growth }
})

export const make = Effect.fn("VoteStore.redis.make")(function* (options: RedisOptions) {
  const client = withScripts(yield* RedisClient.acquire(options))
  const clock = yield* RedisClient.serverClock(client, RedisClient.commandTimeoutOf(options))
  return storeOn(options, client, RedisClient.caller(options), clock)
})

const storeOn = (
  options: RedisOptions,
  client: LivepollRedis,
  call: ReturnType<typeof RedisClient.caller>,
  clock: RedisClient.ServerClock
): VoteStoreShape => {
  const store: VoteStoreShape = {
    ...pollCommands({
      client,
      call,
      servedVia: options.name,
      fenced: (_, send) => clock.fenced(send),
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
}

export const layer = (options: RedisOptions): Layer.Layer<VoteStore> => Layer.scoped(VoteStore, make(options))
