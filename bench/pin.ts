/**
 * Cores for each side of a measurement. The load generator and the server under test would otherwise share the
 * machine's cores as the kernel sees fit, and on a small machine one run's luck decides whether they fight over one
 * core: the bare server measured 23k-40k req/s run to run that way. Pinned, the server under test has a core of its
 * own, always the same one, and the harness (the direct ioredis baselines, and the wrk and redis-server processes it
 * starts, which inherit its CPUs) has the rest.
 */
import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"

export interface Pinning {
  /** taskset's CPU list for the harness and what it starts other than servers (redis-server). */
  readonly harness: string
  /** The one CPU of every server under test (each stage of the app, the bare server). */
  readonly server: string
}

/** The CPUs of a `Cpus_allowed_list` line of /proc/PID/status ("0-3,8,10-11"), in order. */
export const parseCpuList = (text: string): Array<number> => {
  const cpus: Array<number> = []
  for (const part of text.trim().split(",")) {
    const match = /^(\d+)(?:-(\d+))?$/.exec(part.trim())
    if (match === null) throw new Error(`not a CPU list: ${text}`)
    const from = Number(match[1])
    const to = match[2] === undefined ? from : Number(match[2])
    for (let cpu = from; cpu <= to; cpu++) cpus.push(cpu)
  }
  return cpus
}

/** The last allowed CPU for the server, the others for the harness; none with fewer than two CPUs to split. */
export const plan = (allowed: ReadonlyArray<number>): Pinning | undefined => {
  if (allowed.length < 2) return undefined
  return { harness: allowed.slice(0, -1).join(","), server: String(allowed.at(-1)) }
}

/** The CPUs this process may run on (from /proc/self/status); undefined where that cannot be read. */
export const allowedCpus = (): Array<number> | undefined => {
  try {
    const line = /^Cpus_allowed_list:\s*(.+)$/m.exec(readFileSync("/proc/self/status", "utf8"))
    return line === null ? undefined : parseCpuList(line[1]!)
  } catch {
    return undefined
  }
}

/**
 * Pins this process (every thread) to the harness's CPUs and says where servers go; undefined, leaving the kernel to
 * place everything, where there is no taskset or no second CPU. Processes started afterwards inherit the harness's
 * CPUs unless started through `serverCommand`.
 */
export const apply = (): Pinning | undefined => {
  const allowed = allowedCpus()
  const pinning = allowed === undefined ? undefined : plan(allowed)
  if (pinning === undefined) return undefined
  try {
    execFileSync("taskset", ["-a", "-p", "-c", pinning.harness, String(process.pid)], { stdio: "ignore" })
    return pinning
  } catch {
    return undefined
  }
}

/**
 * The command line that runs `command args` on the server's CPU (unchanged when not pinned); with `everyCpu`, on
 * every CPU the harness was allowed before it pinned itself, for a server of more than one process (a primary and
 * its workers), which could use only one core on the server's CPU alone.
 */
export const serverCommand = (
  pinning: Pinning | undefined,
  command: string,
  args: ReadonlyArray<string>,
  everyCpu = false
): [string, Array<string>] =>
  pinning === undefined
    ? [command, [...args]]
    : ["taskset", ["-c", everyCpu ? `${pinning.harness},${pinning.server}` : pinning.server, command, ...args]]
