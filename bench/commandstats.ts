import type { Redis } from "ioredis"

/** Calls per command name, from Redis' own `INFO commandstats`. */
export type CommandCounts = ReadonlyMap<string, number>

/** `cmdstat_hincrby:calls=12,usec=...` lines to `hincrby -> 12`; subcommands keep their `config|set` names. */
export const parse = (info: string): CommandCounts => {
  const counts = new Map<string, number>()
  for (const line of info.split(/\r?\n/)) {
    const match = /^cmdstat_([^:]+):calls=(\d+)/.exec(line)
    if (match) counts.set(match[1]!, Number(match[2]))
  }
  return counts
}

export const diff = (before: CommandCounts, after: CommandCounts): CommandCounts =>
  new Map([...after].map(([name, calls]) => [name, calls - (before.get(name) ?? 0)]))

export const read = async (client: Redis): Promise<CommandCounts> => parse(await client.info("commandstats"))

/** Reads all nodes at once and adds them up. */
export const readAll = async (clients: ReadonlyArray<Redis>): Promise<CommandCounts> => {
  const total = new Map<string, number>()
  for (const counts of await Promise.all(clients.map(read))) {
    for (const [name, calls] of counts) total.set(name, (total.get(name) ?? 0) + calls)
  }
  return total
}

/**
 * Commands that are not the app's work: this harness's own INFO, FLUSHALL, ECHO markers and MONITOR, and connection
 * bookkeeping (ioredis sends INFO as its ready check; QUIT at shutdown), and a replica's REPLCONF acknowledgements to
 * its master (once a second, and when a WAIT asks).
 */
const NOT_WORK =
  /^(info|flushall|echo|monitor|reset|quit|hello|select|replconf|client(\|.*)?|command(\|.*)?|config(\|.*)?)$/

/** Script entry points: one client round trip each, however many commands the script runs inside. */
const SCRIPTS = /^(eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro)$/

export interface CommandUse {
  /**
   * Commands the clients sent, per 1,000 requests: a script call counts once, whatever it runs inside (from MONITOR).
   * Null when not watched (`--no-monitor`).
   */
  readonly perThousand: number | null
  /** Script calls (EVALSHA and kin) per 1,000 requests. */
  readonly scriptsPerThousand: number
  /**
   * Every command Redis executed, per 1,000 requests: those clients sent plus each one a Lua script ran (INFO
   * commandstats counts both alike).
   */
  readonly allPerThousand: number
  /** `perThousand` by command name. */
  readonly byCommand: Record<string, number> | null
  /** `allPerThousand` by command name. */
  readonly allByCommand: Record<string, number>
}

const perThousand = (counts: Iterable<readonly [string, number]>, requests: number) => {
  const scale = requests > 0 ? 1000 / requests : 0
  const byCommand: Record<string, number> = {}
  let total = 0
  let scripts = 0
  for (const [name, calls] of counts) {
    if (calls <= 0 || NOT_WORK.test(name)) continue
    total += calls
    if (SCRIPTS.test(name)) scripts += calls
    byCommand[name] = round(calls * scale)
  }
  return { total: round(total * scale), scripts: round(scripts * scale), byCommand }
}

/**
 * Per 1,000 requests: everything Redis executed (the commandstats difference) and, when `sent` is given (MONITOR's
 * count over the same stretch), what clients sent.
 */
export const use = (
  before: CommandCounts,
  after: CommandCounts,
  requests: number,
  sent?: CommandCounts
): CommandUse => {
  const all = perThousand(diff(before, after), requests)
  const top = sent === undefined ? undefined : perThousand(sent, requests)
  return {
    perThousand: top?.total ?? null,
    scriptsPerThousand: all.scripts,
    allPerThousand: all.total,
    byCommand: top?.byCommand ?? null,
    allByCommand: all.byCommand
  }
}

const round = (n: number) => Math.round(n * 1000) / 1000
