import { Duration, Effect } from "effect"
import * as Cached from "../src/VoteStore/Cached.js"
import * as Sharded from "../src/VoteStore/Sharded.js"
import type { Variant } from "./Simulation.js"
import { real } from "./Simulation.js"

/**
 * Deliberately broken builds of the cluster, each a plausible mistake, for showing that the simulation catches them.
 * Each is assembled from the real layers with one piece changed.
 */

/** The ring hashes each node's position in `REDIS_NODES` instead of its name, so the order of the list matters. */
export const orderDependentRing: Variant = {
  ...real,
  name: "order-dependent ring",
  route: (nodes) => Sharded.make(nodes.map((node, i) => ({ name: `node-${i}`, store: node.store })))
}

/**
 * The buffer forgets a batch as soon as it has handed it over: the write goes on in the background and a failure is
 * dropped, so the store has not confirmed anything when the buffer clears it.
 */
export const clearsBeforeConfirm: Variant = {
  ...real,
  name: "buffer clears before the store confirms",
  beneathBuffer: (store) => ({
    ...store,
    applyBatch: (batch) => Effect.asVoid(Effect.forkDaemon(store.applyBatch(batch)))
  })
}

/** Every attempt of a batch reaches the store under a fresh id, so a retry after a lost answer applies it again. */
export const notIdempotentOnRetry: Variant = {
  ...real,
  name: "flush not idempotent on retry",
  shard: (store) => {
    let attempt = 0
    return { ...store, applyBatch: (batch) => store.applyBatch({ ...batch, id: `${batch.id}#${++attempt}` }) }
  }
}

/** The cache keeps a snapshot across the instance's own flushes: its own votes vanish from reads until it expires. */
export const cacheNotInvalidated: Variant = {
  ...real,
  name: "cache not invalidated by a flush",
  cache: (inner, options) =>
    Effect.map(Cached.make(inner, options), (cached) => ({ ...cached, applyBatch: inner.applyBatch }))
}

/** The cache serves snapshots for ten times the configured TTL. */
export const cacheOverstaysTtl: Variant = {
  ...real,
  name: "cache keeps snapshots past the TTL",
  cache: (inner, options) => Cached.make(inner, { ...options, ttl: Duration.times(Duration.decode(options.ttl), 10) })
}

export const all: ReadonlyArray<Variant> = [
  orderDependentRing,
  clearsBeforeConfirm,
  notIdempotentOnRetry,
  cacheNotInvalidated,
  cacheOverstaysTtl
]
