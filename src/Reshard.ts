/**
 * Moving polls between the rings of two node lists (`npm run reshard`): each poll whose owner differs is moved, with
 * its counts, voters, definition, organiser key and index entries, from the node that holds it to the node the new
 * ring names. A move is three scripts, each atomic on its node, and every one of them can be run again:
 *
 * 1. freeze, on the source: the poll's keys are renamed to staging names and a tombstone `poll:{p}:moved` records
 *    the destination and a fresh move id. A poll already frozen answers the tombstone it has (the move resumes).
 * 2. merge, on the destination: the staged counts are added field by field, the voters, definition (a closed one
 *    stays closed), organiser key and index entries joined in, all under the marker `poll:{p}:merged:<move id>` set
 *    NX in the same script, so a merge run twice adds once. Voters are copied just before, in chunks: adding one
 *    twice changes nothing.
 * 3. clean up, on the source: the staged keys and the index entries go; the tombstone stays.
 *
 * A run finds the polls on every node by their keys (ad-hoc polls have no index entry), so a run interrupted
 * anywhere and run again picks up each poll where it stopped: one still live on its old owner is moved, one frozen is
 * merged again (a no-op if it was) and cleaned up, one moved already has nothing left on the source but its tombstone.
 *
 * Online (`--online`), while instances that know both rings (`REDIS_NODES_NEXT`) keep serving: the old nodes are
 * marked migrating before the scan (a poll they hold nothing of is then made on the new ring), the destination marks
 * each poll incoming before its freeze (one-vote-per-voter votes wait, 503, until the merge), and the stores'
 * scripts on the old owner check the tombstone. `finish` clears the migrating mark once no instance knows both
 * rings any more. The protocol is modelled, interleaving by interleaving, in sim/Growth.ts.
 */
import { Data, Effect } from "effect"
import { positionKey, positionOf } from "./Polls.js"
import { CREATED_CHANNEL, CREATED_KEY, definitionKey, INDEX_KEY, organiserKey, ringNextChannel } from "./Polls/Redis.js"
import { decodeOption } from "./Polls/Shared.js"
import type { StoreUnavailable } from "./Domain.js"
import * as RedisClient from "./RedisClient.js"
import * as Ring from "./Ring.js"
import { countsKey, incomingKey, mergedKey, MIGRATING_KEY, movedKey, stagedKey, votersKey } from "./VoteStore/Redis.js"

export { mergedKey, movedKey, stagedKey }

/** How long a merged marker stays once its move is cleaned up: long past any reader that could still ask for it. */
export const MERGED_MEMORY_SECONDS = 24 * 60 * 60

const PARTS = ["counts", "voters", "definition", "organiser"] as const
type Part = (typeof PARTS)[number]
const liveKey = (pollId: string, part: Part) =>
  part === "counts"
    ? countsKey(pollId)
    : part === "voters"
      ? votersKey(pollId)
      : part === "definition"
        ? definitionKey(pollId)
        : organiserKey(pollId)

/** Voters copied per command. */
const VOTERS_CHUNK = 1000
/** Keys asked for per SCAN step. */
const SCAN_COUNT = 1000
/** Polls moved at once. */
const DEFAULT_CONCURRENCY = 8
/** A progress line every this many polls moved. */
const PROGRESS_EVERY = 50

// KEYS: the poll's 4 live keys, its 4 staged keys, its tombstone. ARGV: destination, a new move id.
// Answers the tombstone of the move in progress (resumed, or started here), or false when there is nothing to move.
const FREEZE_SCRIPT = `
for i = 5, 8 do
  if redis.call('EXISTS', KEYS[i]) == 1 then return redis.call('GET', KEYS[9]) or false end
end
local live = 0
for i = 1, 4 do live = live + redis.call('EXISTS', KEYS[i]) end
if live == 0 then return false end
local tombstone = ARGV[1] .. ' ' .. ARGV[2]
redis.call('SET', KEYS[9], tombstone)
for i = 1, 4 do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('RENAME', KEYS[i], KEYS[i + 4]) end
end
return tombstone`

// KEYS: counts, definition, organiser, merged marker, index, created index, tombstone, incoming (all on the
// destination). ARGV: poll id, definition ('' none), organiser key hash ('' none), position key ('' none), n, then n
// field/count. 0: merged before (nothing done); 1: merged now. Either way the poll's voters are all in: not incoming.
const MERGE_SCRIPT = `
redis.call('DEL', KEYS[8])
if not redis.call('SET', KEYS[4], '1', 'NX') then return 0 end
local n = tonumber(ARGV[5])
for i = 0, n - 1 do redis.call('HINCRBY', KEYS[1], ARGV[6 + 2 * i], ARGV[7 + 2 * i]) end
if ARGV[2] ~= '' then
  local here = redis.call('GET', KEYS[2])
  if not here then
    redis.call('SET', KEYS[2], ARGV[2])
    if ARGV[4] ~= '' then redis.call('ZADD', KEYS[6], 0, ARGV[4]) end
  elseif cjson.decode(ARGV[2]).closed == true then
    local decoded = cjson.decode(here)
    if decoded.closed ~= true then
      decoded.closed = true
      redis.call('SET', KEYS[2], cjson.encode(decoded))
    end
  end
  redis.call('SADD', KEYS[5], ARGV[1])
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'NX') end
redis.call('DEL', KEYS[7])
return 1`

// KEYS: the 4 staged keys, index, created index. ARGV: poll id, position key ('' none).
const CLEAN_UP_SCRIPT = `
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('SREM', KEYS[5], ARGV[1])
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[6], ARGV[2]) end
return 1`

export class ReshardError extends Data.TaggedError("ReshardError")<{ readonly message: string }> {}

/** The steps of one poll's move, in order; `afterStep` is told of each. */
export const STEPS = ["freeze", "copy voters", "merge", "clean up", "forget"] as const
export type Step = (typeof STEPS)[number]

export interface Options {
  /** The nodes of the ring the polls are on now (`REDIS_NODES`). */
  readonly from: ReadonlyArray<RedisClient.RedisNode>
  /** The nodes of the ring they move to (`--to`). */
  readonly to: ReadonlyArray<RedisClient.RedisNode>
  /** Plan only: nothing is written. */
  readonly dryRun?: boolean
  readonly concurrency?: number
  readonly virtualNodes?: number
  /** Run even though app instances are connected to the nodes (they must know both rings). */
  readonly online?: boolean
  /** Runs after each step of each poll's move; its failure stops the run there, as a crash would (tests). */
  readonly afterStep?: (pollId: string, step: Step) => Effect.Effect<void, ReshardError>
}

/** One poll to move: from the node that holds it to the node that is to. */
export interface Move {
  readonly pollId: string
  readonly from: string
  readonly to: string
  /** Frozen by an earlier run: this run finishes that move. */
  readonly resumed: boolean
  /** Where the new ring puts it: `to`, unless an earlier run bound elsewhere froze it (it goes on from `to`). */
  readonly owner: string
}

export interface NodePlan {
  readonly node: string
  /** Polls found on the node (with data, or part-way through a move away from it). */
  readonly polls: number
  /** Polls that move away from it, by destination. */
  readonly moving: ReadonlyMap<string, number>
  readonly resumed: number
  /** Polls with data here that neither ring puts here: left alone, and named in a warning. */
  readonly stray: ReadonlyArray<string>
}

export interface Plan {
  readonly nodes: ReadonlyArray<NodePlan>
  readonly moves: ReadonlyArray<Move>
}

export interface Report {
  readonly plan: Plan
  /** Polls whose data this run merged on their destination. */
  readonly polls: number
  /** Keys moved (counts, voters, definition, organiser key). */
  readonly keys: number
  /** Votes moved: the sum of the counts merged. */
  readonly votes: number
  /** Voters copied. */
  readonly voters: number
}

type Client = Effect.Effect.Success<ReturnType<typeof RedisClient.acquire>>
interface ReshardClient extends Client {
  livepollFreeze(...args: Array<string>): Promise<string | null>
  livepollMerge(...args: Array<string>): Promise<number>
  livepollCleanUp(...args: Array<string>): Promise<number>
}

interface Node {
  readonly name: string
  readonly client: ReshardClient
  readonly call: ReturnType<typeof RedisClient.caller>
}

/** `poll:{<id>}:<rest>` → [id, rest]; undefined for any other key. */
const parseKey = (key: string): readonly [string, string] | undefined => {
  if (!key.startsWith("poll:{")) return undefined
  const end = key.indexOf("}:", 6)
  return end < 0 ? undefined : [key.slice(6, end), key.slice(end + 2)]
}

/** The nodes of both lists by name; a name given two URLs is refused. */
const union = (from: ReadonlyArray<RedisClient.RedisNode>, to: ReadonlyArray<RedisClient.RedisNode>) => {
  const nodes = new Map<string, RedisClient.RedisNode>()
  for (const node of [...from, ...to]) {
    const known = nodes.get(node.name)
    if (known !== undefined && known.url !== node.url) {
      return Effect.fail(
        new ReshardError({ message: `node ${node.name} is ${known.url} in one list and ${node.url} in the other` })
      )
    }
    nodes.set(node.name, node)
  }
  return Effect.succeed([...nodes.values()])
}

const connect = (node: RedisClient.RedisNode) =>
  Effect.map(RedisClient.acquire(node), (client): Node => {
    client.defineCommand("livepollFreeze", { numberOfKeys: 9, lua: FREEZE_SCRIPT })
    client.defineCommand("livepollMerge", { numberOfKeys: 8, lua: MERGE_SCRIPT })
    client.defineCommand("livepollCleanUp", { numberOfKeys: 6, lua: CLEAN_UP_SCRIPT })
    return { name: node.name, client: client as ReshardClient, call: RedisClient.caller(node) }
  })

/** What one node holds of each poll: which kinds of keys. */
const survey = Effect.fnUntraced(function* ({ client, call }: Node) {
  const found = new Map<string, { live: boolean; staged: boolean }>()
  const entry = (id: string) => {
    let e = found.get(id)
    if (e === undefined) found.set(id, (e = { live: false, staged: false }))
    return e
  }
  let cursor = "0"
  do {
    const [next, keys] = yield* call("scan polls", () => client.scan(cursor, "MATCH", "poll:{*", "COUNT", SCAN_COUNT))
    cursor = next
    for (const key of keys) {
      const parsed = parseKey(key)
      if (parsed === undefined) continue
      const [id, rest] = parsed
      if ((PARTS as ReadonlyArray<string>).includes(rest)) entry(id).live = true
      else if (rest.startsWith("moving:")) entry(id).staged = true
    }
  } while (cursor !== "0")
  return found
})

const tombstoneOf = (text: string | null) => {
  if (text === null) return undefined
  const [to, moveId] = text.split(" ")
  return to === undefined || moveId === undefined ? undefined : { to, moveId }
}

/** Which polls change owner, found on the nodes themselves. */
const planOn = Effect.fnUntraced(function* (nodes: ReadonlyMap<string, Node>, oldRing: Ring.Ring, newRing: Ring.Ring) {
  const plans: Array<NodePlan> = []
  const moves: Array<Move> = []
  for (const node of nodes.values()) {
    const found = yield* survey(node)
    const moving = new Map<string, number>()
    const stray: Array<string> = []
    let resumed = 0
    for (const [pollId, { live, staged }] of [...found].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      let to = Ring.nodeFor(newRing, pollId)
      if (staged) {
        // Frozen by an earlier run: it goes where that run sent it.
        const tombstone = tombstoneOf(yield* node.call("read tombstone", () => node.client.get(movedKey(pollId))))
        if (tombstone === undefined) {
          return yield* new ReshardError({ message: `poll ${pollId} is staged on ${node.name} without a tombstone` })
        }
        to = tombstone.to
        resumed++
        const owner = Ring.nodeFor(newRing, pollId)
        if (to !== owner) {
          yield* Effect.logWarning(
            `poll ${pollId} was frozen on ${node.name} by a run bound for ${to}: it goes there, then on to ${owner}`
          )
        }
      } else if (!live || to === node.name) continue
      else if (Ring.nodeFor(oldRing, pollId) !== node.name) {
        stray.push(pollId)
        continue
      }
      if (!nodes.has(to)) {
        return yield* new ReshardError({ message: `poll ${pollId} on ${node.name} is bound for unknown node ${to}` })
      }
      moves.push({ pollId, from: node.name, to, resumed: staged, owner: Ring.nodeFor(newRing, pollId) })
      moving.set(to, (moving.get(to) ?? 0) + 1)
    }
    plans.push({
      node: node.name,
      polls: [...found.values()].filter((e) => e.live || e.staged).length,
      moving,
      resumed,
      stray
    })
  }
  return { nodes: plans, moves } satisfies Plan
})

/** One line per node of the plan. */
export const describePlan = (plan: Plan): ReadonlyArray<string> =>
  plan.nodes.map((n) => {
    const total = [...n.moving.values()].reduce((s, k) => s + k, 0)
    const where = [...n.moving].map(([to, k]) => `${k} to ${to}`).join(", ")
    const resumed = n.resumed > 0 ? ` (${n.resumed} resumed)` : ""
    return `node ${n.node}: ${n.polls} polls, ${total === 0 ? "none move" : `${total} move: ${where}`}${resumed}`
  })

export const describeReport = (report: Report): string =>
  `moved ${report.polls} polls: ${report.keys} keys, ${report.votes} votes, ${report.voters} voters`

const newMoveId = () => `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`

/** The move of one poll, from freezing it on `move.from` to forgetting the marker on `move.to`. */
const movePoll = (
  nodes: ReadonlyMap<string, Node>,
  move: Move,
  tally: { polls: number; keys: number; votes: number; voters: number },
  afterStep: NonNullable<Options["afterStep"]>,
  online: boolean
): Effect.Effect<void, ReshardError | StoreUnavailable> =>
  Effect.gen(function* () {
    const { pollId } = move
    const source = nodes.get(move.from)!
    const step = (name: Step) => afterStep(pollId, name)
    // Online, the destination turns one-vote-per-voter votes away (503) from before the freeze until the merge: a
    // voter whose record is still on its way would otherwise vote again there. (A resumed move whose freeze is done
    // goes to the poll's tombstone: the same destination, or it was cleared by a merge.)
    const destination = nodes.get(move.to)!
    if (online) yield* destination.call("mark incoming", () => destination.client.set(incomingKey(pollId), "1"))

    const tombstone = tombstoneOf(
      yield* source.call("freeze poll", () =>
        source.client.livepollFreeze(
          ...PARTS.map((part) => liveKey(pollId, part)),
          ...PARTS.map((part) => stagedKey(pollId, part)),
          movedKey(pollId),
          move.to,
          newMoveId()
        )
      )
    )
    if (tombstone === undefined) {
      if (online) yield* destination.call("unmark incoming", () => destination.client.del(incomingKey(pollId)))
      return
    }
    yield* step("freeze")
    const target = nodes.get(tombstone.to)
    if (target === undefined) {
      return yield* new ReshardError({ message: `poll ${pollId} is bound for unknown node ${tombstone.to}` })
    }

    const [counts, definition, organiser] = yield* source.call("read staged poll", () =>
      Promise.all([
        source.client.hgetall(stagedKey(pollId, "counts")),
        source.client.get(stagedKey(pollId, "definition")),
        source.client.get(stagedKey(pollId, "organiser"))
      ])
    )
    let voters = 0
    let cursor = "0"
    do {
      const [next, chunk] = yield* source.call("read staged voters", () =>
        source.client.sscan(stagedKey(pollId, "voters"), cursor, "COUNT", VOTERS_CHUNK)
      )
      cursor = next
      if (chunk.length > 0) {
        voters += chunk.length
        yield* target.call("copy voters", () => target.client.sadd(votersKey(pollId), ...chunk))
      }
    } while (cursor !== "0")
    yield* step("copy voters")

    const parsed = definition === null ? undefined : decodeOption(definition)
    const position = parsed !== undefined && parsed._tag === "Some" ? positionKey(positionOf(parsed.value)) : ""
    const fields = Object.entries(counts)
    const merged = yield* target.call("merge poll", () =>
      target.client.livepollMerge(
        countsKey(pollId),
        definitionKey(pollId),
        organiserKey(pollId),
        mergedKey(pollId, tombstone.moveId),
        INDEX_KEY,
        CREATED_KEY,
        movedKey(pollId),
        incomingKey(pollId),
        pollId,
        definition ?? "",
        organiser ?? "",
        position,
        String(fields.length),
        ...fields.flat()
      )
    )
    // Counted by the run whose merge applied it: over an interrupted run and its rerun, each poll and vote once.
    if (merged === 1) {
      tally.polls++
      tally.keys +=
        (fields.length > 0 ? 1 : 0) +
        (voters > 0 ? 1 : 0) +
        (definition !== null ? 1 : 0) +
        (organiser !== null ? 1 : 0)
      tally.votes += fields.reduce((sum, [, n]) => sum + Number(n), 0)
      tally.voters += voters
      if (tally.polls % PROGRESS_EVERY === 0) yield* Effect.logInfo(`moved ${tally.polls} polls so far`)
    }
    yield* step("merge")

    yield* source.call("clean up poll", () =>
      source.client.livepollCleanUp(
        ...PARTS.map((part) => stagedKey(pollId, part)),
        INDEX_KEY,
        CREATED_KEY,
        pollId,
        position
      )
    )
    yield* step("clean up")
    yield* target.call("forget move", () =>
      target.client.expire(mergedKey(pollId, tombstone.moveId), MERGED_MEMORY_SECONDS)
    )
    yield* step("forget")
    if (tombstone.to !== move.owner) {
      yield* movePoll(
        nodes,
        { pollId, from: tombstone.to, to: move.owner, resumed: false, owner: move.owner },
        tally,
        afterStep,
        online
      )
    }
  })

/**
 * Plans the move from the ring of `from` to the ring of `to`, logs it (one line per node), and unless `dryRun`
 * moves every poll that changes owner, logging the totals.
 */
export const run = Effect.fn("Reshard.run")(function* (options: Options) {
  const all = yield* union(options.from, options.to)
  const oldRing = Ring.make(
    options.from.map((n) => n.name),
    options.virtualNodes
  )
  const newRing = Ring.make(
    options.to.map((n) => n.name),
    options.virtualNodes
  )
  const nodes = new Map<string, Node>()
  for (const node of all) nodes.set(node.name, yield* connect(node))
  const online = options.online === true && options.dryRun !== true
  const nextChannel = ringNextChannel(options.to.map((n) => n.name))
  for (const node of nodes.values()) {
    // Every instance of the app listens for new polls on every node: an instance that still serves the old ring
    // alone would write where a poll no longer is. One that knows the next ring listens on its channel as well.
    const [, listening, , knowing] = (yield* node.call("count instances", () =>
      node.client.pubsub("NUMSUB", CREATED_CHANNEL, nextChannel)
    )) as [string, number, string, number]
    if (listening > 0 && options.online !== true && options.dryRun !== true) {
      return yield* new ReshardError({
        message: `${listening} app instances are connected to node ${node.name}: stop them before resharding`
      })
    }
    if (online && listening > knowing) {
      return yield* new ReshardError({
        message:
          `${listening - knowing} of the ${listening} app instances connected to node ${node.name} do not know ` +
          `the next ring: restart them with REDIS_NODES_NEXT=${options.to.map((n) => `${n.name}=${n.url}`).join(",")}`
      })
    }
  }
  if (online) {
    // Before the scan: from here on a poll new to both rings is made on the new ring, so the scan misses none.
    for (const node of options.from) {
      const { client, call } = nodes.get(node.name)!
      yield* call("mark migrating", () => client.set(MIGRATING_KEY, "1"))
    }
    yield* Effect.logInfo(`online: ${MIGRATING_KEY} set on ${options.from.map((n) => n.name).join(", ")}`)
  }

  const plan: Plan = yield* planOn(nodes, oldRing, newRing)
  for (const line of describePlan(plan)) yield* Effect.logInfo(line)
  for (const n of plan.nodes) {
    if (n.stray.length > 0) {
      yield* Effect.logWarning(
        `node ${n.node}: ${n.stray.length} polls that neither ring puts there are left alone: ` +
          n.stray.slice(0, 10).join(", ")
      )
    }
  }
  const tally = { polls: 0, keys: 0, votes: 0, voters: 0 }
  if (options.dryRun !== true) {
    const afterStep = options.afterStep ?? (() => Effect.void)
    yield* Effect.forEach(plan.moves, (move) => movePoll(nodes, move, tally, afterStep, online), {
      concurrency: options.concurrency ?? DEFAULT_CONCURRENCY,
      discard: true
    })
  }
  const report: Report = { plan, ...tally }
  yield* Effect.logInfo(
    options.dryRun === true ? `dry run: ${plan.moves.length} polls would move` : describeReport(report)
  )
  return report
}, Effect.scoped)

/**
 * The end of an online growth (`--finish`), once every instance serves the new ring alone: the old nodes' migrating
 * mark goes (an instance that still knew both rings would, without it, write a poll new since the move to its old
 * owner). Refused while any instance still listens on the next ring's channel.
 */
export const finish = Effect.fn("Reshard.finish")(function* (options: Pick<Options, "from" | "to">) {
  const all = yield* union(options.from, options.to)
  const nextChannel = ringNextChannel(options.to.map((n) => n.name))
  const nodes = new Map<string, Node>()
  for (const node of all) nodes.set(node.name, yield* connect(node))
  for (const node of nodes.values()) {
    const [, knowing] = (yield* node.call("count instances", () => node.client.pubsub("NUMSUB", nextChannel))) as [
      string,
      number
    ]
    if (knowing > 0) {
      return yield* new ReshardError({
        message: `${knowing} app instances connected to node ${node.name} still know both rings: restart them without REDIS_NODES_NEXT first`
      })
    }
  }
  for (const node of options.from) {
    const { client, call } = nodes.get(node.name)!
    yield* call("clear migrating", () => client.del(MIGRATING_KEY))
  }
  yield* Effect.logInfo(
    `online growth finished: ${MIGRATING_KEY} cleared on ${options.from.map((n) => n.name).join(", ")}`
  )
}, Effect.scoped)
