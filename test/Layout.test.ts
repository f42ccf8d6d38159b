import { readdirSync, readFileSync } from "node:fs"
import { join, relative, resolve } from "node:path"
import { describe, expect, it } from "vitest"

/**
 * The dependency arrows the README's "Layout" states, checked on the import lines of src/ and sim/:
 * `Domain` ← store layers ← `Stages` ← `Http` ← `main`, with the store reached from `Http` through its tags only.
 */
const ROOT = resolve(import.meta.dirname, "..")

const filesUnder = (dir: string): Array<string> =>
  readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? filesUnder(join(dir, entry.name)) : entry.name.endsWith(".ts") ? [join(dir, entry.name)] : []
  )

/** What a file imports: packages by name, the project's files as paths from the root (`src/Ring.ts`). */
const importsOf = (file: string): Array<string> =>
  [...readFileSync(join(ROOT, file), "utf8").matchAll(/^(?:import|export)\b[^;]*?\bfrom\s+"([^"]+)"/gms)].map(
    ([, spec]) =>
      spec!.startsWith(".") ? relative(ROOT, resolve(ROOT, file, "..", spec!)).replace(/\.js$/, ".ts") : spec!
  )

const graph = new Map([...filesUnder("src"), ...filesUnder("sim")].map((file) => [file, importsOf(file)]))
const matching = (pattern: RegExp) => [...graph.keys()].filter((file) => pattern.test(file))
/** The files of `from` that import something `to` matches, each with what it imports. */
const offenders = (from: ReadonlyArray<string>, to: RegExp) =>
  from.flatMap((file) =>
    graph
      .get(file)!
      .filter((i) => to.test(i))
      .map((i) => `${file} imports ${i}`)
  )

const HTTP = /^src\/Http(\.ts|\/)/
const BACKENDS = /^src\/(VoteStore|Polls|Feed)\/|^src\/RedisClient\.ts$|^src\/Stages\.ts$/
const STORE_LAYERS = /^src\/(Domain|VoteStore|Polls|Feed|Ring|TtlCache|RedisClient|Voting|LiveResults|Config)(\.ts|\/)/

describe("Layout: dependencies point one way", () => {
  it("reads the imports it checks", () => {
    // A guard on the parser: these arrows exist, so a pattern that found none would make every rule pass.
    expect(graph.get("src/main.ts")).toEqual(expect.arrayContaining(["src/Stages.ts", "src/Http.ts"]))
    expect(graph.get("src/VoteStore/Redis.ts")).toEqual(expect.arrayContaining(["ioredis", "src/VoteStore.ts"]))
    expect(graph.size).toBeGreaterThan(40)
  })

  it("Domain and Ring import no I/O library", () => {
    for (const file of ["src/Domain.ts", "src/Ring.ts"]) {
      expect(graph.get(file)!.filter((i) => i !== "effect")).toEqual([])
    }
  })

  it("only the Redis backends and their connection import ioredis", () => {
    expect(
      offenders(matching(/./), /^ioredis$/).filter((o) => !/^src\/(RedisClient|\w+\/(Redis|Cluster))\.ts /.test(o))
    ).toEqual([])
  })

  it("nothing imports main", () => {
    expect(offenders(matching(/./), /^src\/main\.ts$/)).toEqual([])
  })

  it("the store layers import neither the compositions nor the HTTP side", () => {
    expect(offenders(matching(STORE_LAYERS), /^src\/(Stages|main)\.ts$|^src\/Http(\.ts|\/)/)).toEqual([])
  })

  it("the compositions do not import the HTTP side", () => {
    expect(offenders(["src/Stages.ts"], HTTP)).toEqual([])
  })

  it("the HTTP side knows the stores through their tags, never a backend or a composition", () => {
    expect(offenders(matching(HTTP), BACKENDS)).toEqual([])
  })

  it("sim/ imports the layers and fakes, never main or the HTTP side", () => {
    expect(offenders(matching(/^sim\//), /^src\/main\.ts$|^src\/Http(\.ts|\/)/)).toEqual([])
  })
})
