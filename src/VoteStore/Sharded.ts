import { Effect, Layer } from "effect"
import type { OptionId, PollId } from "../Domain.js"
import * as Ring from "../Ring.js"
import type { VoteStoreShape } from "../VoteStore.js"
import { VoteStore } from "../VoteStore.js"
import * as RedisStore from "./Redis.js"
import { type Batch } from "../VoteStore.js"

export interface ShardNode {
  readonly name: string
  readonly store: VoteStoreShape
}

/** Entries keyed by poll, split by a key of each poll (the node it lives on). */
const partsBy = <K, V>(entries: Iterable<readonly [PollId, V]>, keyOf: (pollId: PollId) => K) => {
  const parts = new Map<K, Map<PollId, V>>()
  for (const [pollId, value] of entries) {
    const key = keyOf(pollId)
    let part = parts.get(key)
    if (part === undefined) parts.set(key, (part = new Map()))
    part.set(pollId, value)
  }
  return parts
}

/** Every node's health in one: their nodes, and the votes they hold pending. */
const healthOf = (nodes: ReadonlyArray<ShardNode>) =>
  Effect.forEach(nodes, (n) => n.store.health, { concurrency: "unbounded" }).pipe(
    Effect.map((all) => ({
      nodes: all.flatMap((h) => h.nodes),
      pendingVotes: all.reduce((sum, h) => sum + h.pendingVotes, 0)
    }))
  )

/** Routes each poll to one node of a consistent-hash ring over the nodes' names. */
export const make = (nodes: ReadonlyArray<ShardNode>, virtualNodes = Ring.DEFAULT_VIRTUAL_NODES): VoteStoreShape => {
  const ring = Ring.make(
    nodes.map((n) => n.name),
    virtualNodes
  )
  const byName = new Map(nodes.map((n) => [n.name, n.store]))
  const storeFor = (pollId: PollId) => byName.get(Ring.nodeFor(ring, pollId))!
  /** Entries keyed by poll, split by the node each poll lives on. */
  const byNode = <V>(entries: Iterable<readonly [PollId, V]>) =>
    partsBy(entries, (pollId) => Ring.nodeFor(ring, pollId))
  return {
    vote: (pollId: PollId, optionId: OptionId) => storeFor(pollId).vote(pollId, optionId),
    voteOnce: (pollId, optionId, voterId) => storeFor(pollId).voteOnce(pollId, optionId, voterId),
    results: (pollId: PollId) => storeFor(pollId).results(pollId),
    exactResults: (pollId: PollId, batchIds: ReadonlyArray<string>) => storeFor(pollId).exactResults(pollId, batchIds),
    optionsOf: (pollIds) =>
      Effect.map(
        Effect.forEach(
          byNode(pollIds.map((pollId) => [pollId, pollId] as const)),
          ([node, part]) => byName.get(node)!.optionsOf([...part.keys()]),
          { concurrency: "unbounded" }
        ),
        (maps) => new Map(maps.flatMap((m) => [...m]))
      ),
    // Each node records the batch id on its own, so a retry after a partial failure re-applies nowhere.
    applyBatch: (batch: Batch) =>
      Effect.forEach(
        byNode(batch.increments),
        ([node, increments]) => byName.get(node)!.applyBatch({ id: batch.id, increments }),
        { concurrency: "unbounded", discard: true }
      ),
    partitionOf: (pollId: PollId) => Ring.nodeFor(ring, pollId),
    health: healthOf(nodes)
  }
}

export const layerRedis = (
  nodes: ReadonlyArray<RedisStore.RedisOptions>,
  virtualNodes?: number
): Layer.Layer<VoteStore> =>
  Layer.scoped(
    VoteStore,
    Effect.forEach(nodes, (node) => Effect.map(RedisStore.make(node), (store) => ({ name: node.name, store }))).pipe(
      Effect.map((shards) => make(shards, virtualNodes))
    )
  )

export interface GrowthNode extends ShardNode {
  readonly growth: RedisStore.Growth
}

/**
 * The ring while it grows (`REDIS_NODES_NEXT`): a poll whose owner is the same in both rings is served as `make`
 * serves it. One whose owner differs is asked of its old owner first, whose scripts check whether it has moved
 * (its tombstone, or the reshard begun and nothing of it there) and then do nothing and say so; the instance then
 * acts on the new owner. The protocol, and why each piece of it is needed: sim/Growth.ts.
 */
export const makeGrowing = (
  nodes: ReadonlyArray<GrowthNode>,
  now: ReadonlyArray<string>,
  next: ReadonlyArray<string>,
  virtualNodes = Ring.DEFAULT_VIRTUAL_NODES
): VoteStoreShape => {
  const oldRing = Ring.make(now, virtualNodes)
  const newRing = Ring.make(next, virtualNodes)
  const byName = new Map(nodes.map((n) => [n.name, n]))
  const oldOwner = (pollId: PollId) => byName.get(Ring.nodeFor(oldRing, pollId))!
  const newOwner = (pollId: PollId) => byName.get(Ring.nodeFor(newRing, pollId))!
  const moves = (pollId: PollId) => Ring.nodeFor(oldRing, pollId) !== Ring.nodeFor(newRing, pollId)
  const byNode: <V>(
    entries: Iterable<readonly [PollId, V]>,
    owner: (pollId: PollId) => GrowthNode
  ) => Map<GrowthNode, Map<PollId, V>> = partsBy

  /** A moving poll's counts: the old owner's, or once it has moved the new owner's and what is staged unless merged. */
  const readMoving = (pollId: PollId, batchIds: ReadonlyArray<string>) =>
    Effect.flatMap(oldOwner(pollId).growth.readUnlessMoved(pollId, batchIds), (o) => {
      if (!o.moved) {
        return Effect.succeed({
          counts: o.counts,
          servedVia: oldOwner(pollId).name,
          appliedBatches: o.appliedBatches
        })
      }
      const n = newOwner(pollId)
      return Effect.map(n.growth.readArrived(pollId, o.moveId, batchIds), (arrived) => {
        const counts = arrived.counts
        if (!arrived.merged)
          for (const [option, k] of Object.entries(o.staged)) counts[option] = (counts[option] ?? 0) + k
        const applied = new Set([...o.appliedBatches, ...arrived.appliedBatches])
        return { counts, servedVia: n.name, appliedBatches: batchIds.filter((id) => applied.has(id)) }
      })
    })

  return {
    vote: (pollId, optionId) =>
      moves(pollId)
        ? Effect.flatMap(oldOwner(pollId).growth.voteUnlessMoved(pollId, optionId), (moved) =>
            moved ? newOwner(pollId).store.vote(pollId, optionId) : Effect.void
          )
        : oldOwner(pollId).store.vote(pollId, optionId),
    voteOnce: (pollId, optionId, voterId) =>
      moves(pollId)
        ? Effect.flatMap(oldOwner(pollId).growth.voteOnceUnlessMoved(pollId, optionId, voterId), (moved) =>
            moved ? newOwner(pollId).growth.voteOnceArriving(pollId, optionId, voterId) : Effect.void
          )
        : oldOwner(pollId).store.voteOnce(pollId, optionId, voterId),
    results: (pollId) =>
      moves(pollId)
        ? Effect.map(readMoving(pollId, []), ({ counts, servedVia }) => ({ counts, servedVia }))
        : oldOwner(pollId).store.results(pollId),
    exactResults: (pollId, batchIds) =>
      moves(pollId) ? readMoving(pollId, batchIds) : oldOwner(pollId).store.exactResults(pollId, batchIds),
    optionsOf: (pollIds) => {
      const staying = pollIds.filter((p) => !moves(p))
      const moving = pollIds.filter(moves)
      return Effect.map(
        Effect.all(
          [
            ...[
              ...byNode(
                staying.map((p) => [p, p] as const),
                oldOwner
              )
            ].map(([node, part]) => node.store.optionsOf([...part.keys()])),
            // A moving poll's options may be on either owner, or staged on the old one.
            ...[
              ...byNode(
                moving.map((p) => [p, p] as const),
                oldOwner
              )
            ].map(([node, part]) => node.growth.optionsWithStaged([...part.keys()])),
            ...[
              ...byNode(
                moving.map((p) => [p, p] as const),
                newOwner
              )
            ].map(([node, part]) => node.store.optionsOf([...part.keys()]))
          ],
          { concurrency: "unbounded" }
        ),
        (maps) => {
          const all = new Map<PollId, Array<string>>()
          for (const m of maps) {
            for (const [p, options] of m) all.set(p, [...new Set([...(all.get(p) ?? []), ...options])])
          }
          return all
        }
      )
    },
    // Each node records the batch id on its own; a moving poll's old owner records which polls it sent on, so a retry
    // sends them on again, and the new owner keeps one marker per poll for what was sent on.
    applyBatch: (batch: Batch) =>
      Effect.forEach(
        byNode(batch.increments, oldOwner),
        ([node, increments]) => {
          const part = { id: batch.id, increments }
          if (![...increments.keys()].some(moves)) return node.store.applyBatch(part)
          return Effect.flatMap(node.growth.applyBatchUnlessMoved(part, moves), (sent) =>
            Effect.forEach(
              byNode(
                sent.map((p) => [p, increments.get(p)!] as const),
                newOwner
              ),
              ([target, redirected]) => target.growth.applyRedirected({ id: batch.id, increments: redirected }),
              { concurrency: "unbounded", discard: true }
            )
          )
        },
        { concurrency: "unbounded", discard: true }
      ),
    partitionOf: (pollId: PollId) => Ring.nodeFor(oldRing, pollId),
    health: healthOf(nodes)
  }
}

/** The shards of both rings, for `makeGrowing`: a node in both lists is connected once. */
export const layerRedisGrowing = (
  now: ReadonlyArray<RedisStore.RedisOptions>,
  next: ReadonlyArray<RedisStore.RedisOptions>,
  virtualNodes?: number
): Layer.Layer<VoteStore> => {
  const union = new Map<string, RedisStore.RedisOptions>()
  for (const node of [...now, ...next]) if (!union.has(node.name)) union.set(node.name, node)
  return Layer.scoped(
    VoteStore,
    Effect.forEach(union.values(), (node) =>
      Effect.map(RedisStore.makeNode(node), ({ store, growth }) => ({ name: node.name, store, growth }))
    ).pipe(
      Effect.map((shards) =>
        makeGrowing(
          shards,
          now.map((n) => n.name),
          next.map((n) => n.name),
          virtualNodes
        )
      )
    )
  )
}
