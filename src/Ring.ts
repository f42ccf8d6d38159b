/**
 * Consistent-hash ring over node names.
 *
 * Each node owns `virtualNodes` points at `murmur3_32("<name>#<i>")` (i = 0 .. virtualNodes-1, UTF-8, seed 0).
 * A key belongs to the first point clockwise from `murmur3_32(key)`, wrapping at 2^32. Points are ordered by
 * (hash, node name), so the ring depends only on the set of names and never on the order they were listed in.
 */

export const DEFAULT_VIRTUAL_NODES = 4096

const encoder = new TextEncoder()

/** The UTF-8 bytes of `text`; ASCII (every poll id and node name) is copied directly, without the encoder. */
const utf8 = (text: string): Uint8Array => {
  const bytes = new Uint8Array(text.length)
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i)
    if (code > 0x7f) return encoder.encode(text)
    bytes[i] = code
  }
  return bytes
}

/** MurmurHash3 x86 32-bit of the UTF-8 bytes of `text`, as an unsigned integer. */
export const murmur3 = (text: string, seed = 0): number => {
  const bytes = utf8(text)
  const c1 = 0xcc9e2d51
  const c2 = 0x1b873593
  let h = seed >>> 0
  const blocks = bytes.length & ~3
  for (let i = 0; i < blocks; i += 4) {
    let k = bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24)
    k = Math.imul(k, c1)
    k = (k << 15) | (k >>> 17)
    k = Math.imul(k, c2)
    h ^= k
    h = (h << 13) | (h >>> 19)
    h = (Math.imul(h, 5) + 0xe6546b64) | 0
  }
  let k = 0
  switch (bytes.length & 3) {
    case 3:
      k ^= bytes[blocks + 2]! << 16
    // falls through
    case 2:
      k ^= bytes[blocks + 1]! << 8
    // falls through
    case 1:
      k ^= bytes[blocks]!
      k = Math.imul(k, c1)
      k = (k << 15) | (k >>> 17)
      k = Math.imul(k, c2)
      h ^= k
  }
  h ^= bytes.length
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

export interface Ring {
  readonly nodes: ReadonlyArray<string>
  readonly virtualNodes: number
  /** Sorted point hashes. */
  readonly points: Uint32Array
  /** owners[i] is the index in `nodes` of the node owning points[i]. */
  readonly owners: Uint16Array
}

export const make = (names: Iterable<string>, virtualNodes = DEFAULT_VIRTUAL_NODES): Ring => {
  const nodes = [...new Set(names)].sort()
  if (nodes.length === 0) throw new Error("a ring needs at least one node")
  if (nodes.length > 0xffff) throw new Error("a ring holds at most 65535 nodes")
  if (!Number.isInteger(virtualNodes) || virtualNodes < 1) throw new Error("virtualNodes must be a positive integer")
  const entries: Array<{ hash: number; owner: number }> = []
  nodes.forEach((name, owner) => {
    for (let i = 0; i < virtualNodes; i++) entries.push({ hash: murmur3(`${name}#${i}`), owner })
  })
  // `nodes` is sorted, so the owner index breaks hash ties by name.
  entries.sort((a, b) => a.hash - b.hash || a.owner - b.owner)
  return {
    nodes,
    virtualNodes,
    points: Uint32Array.from(entries, (e) => e.hash),
    owners: Uint16Array.from(entries, (e) => e.owner)
  }
}

/** Index of the first point at or after `hash`, wrapping to 0. */
const successor = (points: Uint32Array, hash: number): number => {
  let lo = 0
  let hi = points.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (points[mid]! < hash) lo = mid + 1
    else hi = mid
  }
  return lo === points.length ? 0 : lo
}

/** The node owning a point of the hash space: the first ring point at or after it, wrapping around. */
export const nodeForHash = (ring: Ring, hash: number): string => ring.nodes[ring.owners[successor(ring.points, hash)]!]!

/** The node a key belongs to. A ring of one node owns every key: no hash needed (this runs on every vote). */
export const nodeFor = (ring: Ring, key: string): string =>
  ring.nodes.length === 1 ? ring.nodes[0]! : nodeForHash(ring, murmur3(key))

/** The exact fraction of the 2^32 hash space each node owns. */
export const ownership = (ring: Ring): Map<string, number> => {
  const owned = new Array<number>(ring.nodes.length).fill(0)
  const { points, owners } = ring
  for (let i = 0; i < points.length; i++) {
    // Point i owns the arc (points[i-1], points[i]]; point 0 also owns the wrap-around arc.
    const previous = i === 0 ? points[points.length - 1]! - 2 ** 32 : points[i - 1]!
    owned[owners[i]!]! += points[i]! - previous
  }
  return new Map(ring.nodes.map((name, i) => [name, owned[i]! / 2 ** 32]))
}
