import * as Ring from "../src/Ring.js"

/**
 * Exact measurements of a ring, computed from its points rather than sampled: between two consecutive points of the
 * rings being compared every hash has the same owner in each ring, so one probe per arc covers the whole 2^32 space.
 */

const SPACE = 2 ** 32

/** The contract's default node names: `redis_<port>` for ports 7000, 7001, ... */
export const defaultNames = (n: number) => Array.from({ length: n }, (_, i) => `redis_${7000 + i}`)

/** Owner of a hash: the first point at or after it, wrapping to the first point. */
export const ownerOfHash = Ring.nodeForHash

/** The busiest node's share of the hash space divided by the mean share 1/n. */
export const maxOverMean = (ring: Ring.Ring): number => Math.max(...Ring.ownership(ring).values()) * ring.nodes.length

export interface Remap {
  /** Fraction of the hash space whose owner differs between the two rings. */
  readonly moved: number
  /** Fraction of the space that moved, per (from -> to) pair. */
  readonly flows: ReadonlyMap<string, number>
}

/** Compares the owner of every hash in two rings. */
export const remap = (before: Ring.Ring, after: Ring.Ring): Remap => {
  const all = new Uint32Array(before.points.length + after.points.length)
  all.set(before.points)
  all.set(after.points, before.points.length)
  all.sort()
  const flows = new Map<string, number>()
  let moved = 0
  for (let i = 0; i < all.length; i++) {
    // The arc (all[i-1], all[i]] holds no point of either ring inside it, so all[i] speaks for every hash in it.
    const width = i === 0 ? all[0]! + SPACE - all[all.length - 1]! : all[i]! - all[i - 1]!
    if (width === 0) continue
    const from = ownerOfHash(before, all[i]!)
    const to = ownerOfHash(after, all[i]!)
    if (from !== to) {
      moved += width
      const key = `${from} -> ${to}`
      flows.set(key, (flows.get(key) ?? 0) + width / SPACE)
    }
  }
  return { moved: moved / SPACE, flows }
}

export interface RingRow {
  readonly nodes: number
  readonly virtualNodes: number
  readonly maxOverMean: number
  /** Fraction of keys that move when one more node joins (n -> n+1). */
  readonly movedOnAdd: number
  /** The ideal share for the newcomer, 1/(n+1). */
  readonly idealOnAdd: number
}

export const row = (n: number, virtualNodes: number): RingRow => {
  const ring = Ring.make(defaultNames(n), virtualNodes)
  const grown = Ring.make(defaultNames(n + 1), virtualNodes)
  return {
    nodes: n,
    virtualNodes,
    maxOverMean: maxOverMean(ring),
    movedOnAdd: remap(ring, grown).moved,
    idealOnAdd: 1 / (n + 1)
  }
}

/** The worst max/mean over rings of 2..16 default-named nodes, for each candidate virtual-node count. */
export const worstBalance = (virtualNodes: number, sizes: ReadonlyArray<number> = range(2, 16)) => {
  let worst = { nodes: 0, maxOverMean: 0 }
  for (const n of sizes) {
    const m = maxOverMean(Ring.make(defaultNames(n), virtualNodes))
    if (m > worst.maxOverMean) worst = { nodes: n, maxOverMean: m }
  }
  return worst
}

export const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i)

/** A small deterministic generator (mulberry32) for sampling poll ids without fast-check's overhead per id. */
export const mulberry32 = (seed: number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32
  }
}

const ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-."

/** A random poll id as the contract allows them: 1-64 characters of A-Z a-z 0-9 _ - . */
export const randomPollId = (random: () => number) => {
  // At least 6 characters, so ids rarely repeat and the sample stays independent.
  const length = 6 + Math.floor(random() * 19)
  let id = ""
  for (let i = 0; i < length; i++) id += ID_CHARS[Math.floor(random() * ID_CHARS.length)]
  return id
}

/** How many of `count` random poll ids land on each node. */
export const sample = (ring: Ring.Ring, count: number, seed: number): Map<string, number> => {
  const random = mulberry32(seed)
  const counts = new Map(ring.nodes.map((name) => [name, 0]))
  for (let i = 0; i < count; i++) {
    const node = Ring.nodeFor(ring, randomPollId(random))
    counts.set(node, counts.get(node)! + 1)
  }
  return counts
}

/** Bytes of the ring's lookup tables: a 32-bit point and a 16-bit owner per virtual node. */
export const memoryBytes = (ring: Ring.Ring) => ring.points.byteLength + ring.owners.byteLength
