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

/** Routes each poll to one node of a consistent-hash ring over the nodes' names. */
export const make = (nodes: ReadonlyArray<ShardNode>, virtualNodes = Ring.DEFAULT_VIRTUAL_NODES): VoteStoreShape => {
  const ring = Ring.make(
    nodes.map((n) => n.name),
    virtualNodes
  )
  const byName = new Map(nodes.map((n) => [n.name, n.store]))
  const storeFor = (pollId: PollId) => byName.get(Ring.nodeFor(ring, pollId))!
  /** Entries keyed by poll, split by the node each poll lives on. */
  const byNode = <V>(entries: Iterable<readonly [PollId, V]>) => {
    const parts = new Map<string, Map<PollId, V>>()
    for (const [pollId, value] of entries) {
      const node = Ring.nodeFor(ring, pollId)
      let part = parts.get(node)
      if (part === undefined) parts.set(node, (part = new Map()))
      part.set(pollId, value)
    }
    return parts
  }
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
    health: Effect.forEach(nodes, (n) => n.store.health, { concurrency: "unbounded" }).pipe(
      Effect.map((all) => ({
        nodes: all.flatMap((h) => h.nodes),
        pendingVotes: all.reduce((sum, h) => sum + h.pendingVotes, 0)
      }))
    )
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
