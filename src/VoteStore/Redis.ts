import { Duration, Effect, Layer, Runtime } from "effect"
import { Redis } from "ioredis"
import type { Batch, OptionId, PollId } from "../Domain.js"
import { MAX_OPTIONS_PER_POLL, StoreUnavailable, TooManyOptions } from "../Domain.js"
import type { VoteStoreShape } from "../VoteStore.js"
import { VoteStore } from "../VoteStore.js"

/** The contract's key layout; the braces are a Redis Cluster hash tag. */
export const countsKey = (pollId: string) => `poll:{${pollId}}:counts`
const batchKey = (batchId: string) => `livepoll:batch:${batchId}`

/** How long a node remembers an applied batch id; far longer than any retry of that batch can take. */
const BATCH_MEMORY_SECONDS = 24 * 60 * 60
/** Polls per script call, so one large flush never blocks a node for long. */
const POLLS_PER_SCRIPT = 500
/** A command that has not answered in this time fails, so callers get a 503 within the contract's 2 s. */
export const COMMAND_TIMEOUT_MS = 1500

const VOTE_SCRIPT = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HLEN', KEYS[1]) < tonumber(ARGV[2]) then
  return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
end
return -1`

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

interface LivepollRedis extends Redis {
  livepollVote(key: string, option: string, max: number): Promise<number>
  livepollApplyBatch(numKeys: number, ...args: Array<string | number>): Promise<number>
}

export interface RedisOptions {
  readonly url: string
  /** The node's name: `served_via` of reads and the label in health and logs. */
  readonly name: string
}

const connect = (url: string): LivepollRedis => {
  const client = new Redis(url, {
    // Fail fast while disconnected instead of queueing without bound; ioredis reconnects by itself.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: COMMAND_TIMEOUT_MS,
    connectTimeout: 1000,
    retryStrategy: (attempt) => Math.min(attempt * 100, 1000)
  })
  client.defineCommand("livepollVote", { numberOfKeys: 1, lua: VOTE_SCRIPT })
  client.defineCommand("livepollApplyBatch", { lua: APPLY_BATCH_SCRIPT })
  return client as LivepollRedis
}

const splitBatch = (batch: Batch): Array<{ id: string; args: Array<string | number>; keys: number }> => {
  const entries = [...batch.increments]
  const chunks = []
  for (let start = 0, part = 0; start < entries.length; start += POLLS_PER_SCRIPT, part++) {
    const slice = entries.slice(start, start + POLLS_PER_SCRIPT)
    // Chunk ids derive from the batch id, so a retry of the batch maps onto the same markers.
    const id = entries.length > POLLS_PER_SCRIPT ? `${batch.id}.${part}` : batch.id
    const keys: Array<string> = [batchKey(id)]
    const argv: Array<string | number> = [BATCH_MEMORY_SECONDS]
    for (const [pollId, options] of slice) {
      keys.push(countsKey(pollId))
      argv.push(options.size)
      for (const [optionId, n] of options) argv.push(optionId, n)
    }
    chunks.push({ id, keys: keys.length, args: [...keys, ...argv] })
  }
  return chunks
}

export const make = Effect.fn("VoteStore.redis.make")(function* (options: RedisOptions) {
  const client = yield* Effect.acquireRelease(
    Effect.sync(() => connect(options.url)),
    (client) =>
      Effect.promise(() => client.quit()).pipe(
        Effect.timeout(Duration.seconds(1)),
        Effect.ignore,
        Effect.ensuring(Effect.sync(() => client.disconnect()))
      )
  )

  const runFork = Runtime.runFork(yield* Effect.runtime<never>())
  // undefined until the first connection attempt settles, so a node that is down at start-up is logged too.
  let reachable: boolean | undefined = undefined
  client.on("ready", () => {
    reachable = true
    runFork(Effect.logInfo(`redis node ${options.name} connected`).pipe(Effect.annotateLogs("url", options.url)))
  })
  client.on("error", (error: Error) => {
    // ioredis emits one error per reconnect attempt; log the transition only.
    if (reachable !== false) {
      reachable = false
      runFork(Effect.logWarning(`redis node ${options.name} unreachable: ${error.message}`))
    }
  })
  client.on("end", () => {
    reachable = false
  })

  const call = <A>(what: string, run: () => Promise<A>) =>
    Effect.tryPromise({
      try: run,
      catch: (error) => new StoreUnavailable({ node: options.name, reason: `${what}: ${String(error)}` })
    }).pipe(
      // A second guard in case the client itself hangs (for example mid-reconnect).
      Effect.timeoutFail({
        duration: Duration.millis(COMMAND_TIMEOUT_MS + 200),
        onTimeout: () => new StoreUnavailable({ node: options.name, reason: `${what}: timed out` })
      })
    )

  const store: VoteStoreShape = {
    vote: Effect.fn("VoteStore.redis.vote")(function* (pollId: PollId, optionId: OptionId) {
      const result = yield* call("vote", () => client.livepollVote(countsKey(pollId), optionId, MAX_OPTIONS_PER_POLL))
      if (result < 0) return yield* new TooManyOptions({ pollId })
    }),
    results: Effect.fn("VoteStore.redis.results")(function* (pollId: PollId) {
      const raw = yield* call("results", () => client.hgetall(countsKey(pollId)))
      const counts: Record<string, number> = {}
      for (const field in raw) counts[field] = Number(raw[field])
      return { counts, servedVia: options.name }
    }),
    applyBatch: Effect.fn("VoteStore.redis.applyBatch")(function* (batch: Batch) {
      for (const chunk of splitBatch(batch)) {
        yield* call(`apply batch ${chunk.id}`, () => client.livepollApplyBatch(chunk.keys, ...chunk.args))
      }
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
