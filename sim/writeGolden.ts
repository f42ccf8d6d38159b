/**
 * Writes sim/golden/ring.json: where the ring puts 1000 poll ids for the nodes redis_7000..redis_7002. The golden test
 * fails whenever the mapping changes, so run this only for a deliberate change of the hash or the ring (which moves
 * existing polls to other shards), and say so in the change:
 *
 *   npx tsx sim/writeGolden.ts [virtualNodes]
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import * as Ring from "../src/Ring.js"
import { mulberry32, randomPollId } from "./RingStats.js"

export const GOLDEN_FILE = path.join(path.dirname(fileURLToPath(import.meta.url)), "golden", "ring.json")

export interface Golden {
  readonly hash: string
  readonly virtualNodes: number
  readonly nodes: ReadonlyArray<string>
  /** Published MurmurHash3 x86_32 test vectors: [text, seed, hash]. */
  readonly murmur3: ReadonlyArray<readonly [string, number, number]>
  readonly polls: Readonly<Record<string, string>>
}

/** 500 short numeric ids, as clients tend to use, and 500 random ids of the contract's alphabet. */
export const goldenPollIds = (): Array<string> => {
  const random = mulberry32(20240604)
  return [
    ...Array.from({ length: 500 }, (_, i) => String(i + 1)),
    ...Array.from({ length: 500 }, () => randomPollId(random))
  ]
}

const VECTORS: Golden["murmur3"] = [
  ["", 0, 0],
  ["", 1, 0x514e28b7],
  ["", 0xffffffff, 0x81f16f39],
  ["test", 0, 0xba6bd213],
  ["Hello, world!", 0, 0xc0363e43],
  ["The quick brown fox jumps over the lazy dog", 0, 0x2e4ff723],
  ["a", 0x9747b28c, 0x7fa09ea6],
  ["abc", 0x9747b28c, 0xc84a62dd],
  ["aaaa", 0x9747b28c, 0x5a97808a],
  ["Hello, world!", 0x9747b28c, 0x24884cba]
]

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const virtualNodes = Number(process.argv[2] ?? Ring.DEFAULT_VIRTUAL_NODES)
  const nodes = ["redis_7000", "redis_7001", "redis_7002"]
  const ring = Ring.make(nodes, virtualNodes)
  const golden: Golden = {
    hash: "MurmurHash3 x86 32-bit of the UTF-8 bytes, seed 0; virtual node i of node N at murmur3(`N#i`)",
    virtualNodes,
    nodes,
    murmur3: VECTORS,
    polls: Object.fromEntries(goldenPollIds().map((id) => [id, Ring.nodeFor(ring, id)]))
  }
  fs.mkdirSync(path.dirname(GOLDEN_FILE), { recursive: true })
  fs.writeFileSync(GOLDEN_FILE, JSON.stringify(golden, null, 2) + "\n")
  console.log(
    `wrote ${GOLDEN_FILE}: ${Object.keys(golden.polls).length} polls over ${nodes.join(", ")}, ${virtualNodes} virtual nodes`
  )
}
