import { execFileSync } from "node:child_process"
import { readdirSync, readFileSync } from "node:fs"

/** What Linux says about a process: memory now and at its peak, and CPU time used so far. */
export interface ProcSample {
  readonly at: number
  readonly rssMb: number
  /** VmHWM: the peak resident set since the process started. */
  readonly peakRssMb: number
  /** User plus system CPU time, in seconds. */
  readonly cpuSeconds: number
}

const ticksPerSecond = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100
  } catch {
    return 100
  }
})()

const kbField = (status: string, name: string) => {
  const match = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)
  return match ? Number(match[1]) / 1024 : NaN
}

/** Fields of /proc/PID/stat after the command name, which is in parentheses and may itself hold spaces. */
const statFields = (pid: number | string) => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")
}

/** Every process below `root`, by its parent (field 4 of /proc/PID/stat), `root` not included. */
export const descendants = (root: number): Array<number> => {
  let entries: Array<string>
  try {
    entries = readdirSync("/proc").filter((e) => /^\d+$/.test(e))
  } catch {
    return []
  }
  const children = new Map<number, Array<number>>()
  for (const entry of entries) {
    try {
      const parent = Number(statFields(entry)[1])
      children.set(parent, [...(children.get(parent) ?? []), Number(entry)])
    } catch {
      // gone meanwhile
    }
  }
  const found: Array<number> = []
  const queue = [...(children.get(root) ?? [])]
  while (queue.length > 0) {
    const pid = queue.shift()!
    found.push(pid)
    queue.push(...(children.get(pid) ?? []))
  }
  return found
}

const sampleOne = (pid: number, children: boolean): Omit<ProcSample, "at"> => {
  const status = readFileSync(`/proc/${pid}/status`, "utf8")
  const fields = statFields(pid)
  // utime, stime, and with `children` the cutime, cstime of children already reaped.
  const cpuTicks = Number(fields[11]) + Number(fields[12]) + (children ? Number(fields[13]) + Number(fields[14]) : 0)
  return {
    rssMb: kbField(status, "VmRSS"),
    peakRssMb: kbField(status, "VmHWM"),
    cpuSeconds: cpuTicks / ticksPerSecond
  }
}

/**
 * Undefined where /proc is not there (not Linux) or the process is gone. With `children`, the sum over the process
 * and every process below it (a primary and its workers): CPU time, the reaped children's included, RSS, and the
 * peaks of each (a bound above the peak of the whole, as they need not peak at once).
 */
export const sample = (pid: number, children = false): ProcSample | undefined => {
  try {
    const own = sampleOne(pid, children)
    if (!children) return { at: Date.now(), ...own }
    let { cpuSeconds, peakRssMb, rssMb } = own
    for (const child of descendants(pid)) {
      try {
        const s = sampleOne(child, true)
        cpuSeconds += s.cpuSeconds
        rssMb += s.rssMb
        peakRssMb += s.peakRssMb
      } catch {
        // gone meanwhile: its time is in its parent's cutime/cstime once reaped
      }
    }
    return { at: Date.now(), rssMb, peakRssMb, cpuSeconds }
  } catch {
    return undefined
  }
}

/**
 * Samples `pid` (with `children`, and every process below it) every `intervalMs` until stopped; `note` tags each
 * sample (e.g. with the votes so far).
 */
export const watch = (pid: number, intervalMs: number, note: () => number = () => 0, children = false) => {
  const samples: Array<ProcSample & { readonly note: number }> = []
  const take = () => {
    const s = sample(pid, children)
    if (s !== undefined) samples.push({ ...s, note: note() })
  }
  take()
  const timer = setInterval(take, intervalMs)
  return {
    samples,
    stop: () => {
      clearInterval(timer)
      take()
      return samples
    }
  }
}

/** CPU seconds the whole machine spent busy (all cores) since boot, from /proc/stat. */
export const machineBusySeconds = (): number | undefined => {
  try {
    const [, ...fields] = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/)
    const [user, nice, system, , , irq, softirq, steal] = fields.map(Number)
    return (user! + nice! + system! + irq! + softirq! + (steal ?? 0)) / ticksPerSecond
  } catch {
    return undefined
  }
}

/** CPU seconds used by this process and every process below it (reaped children included), from /proc. */
export const treeCpuSeconds = (root: number = process.pid): number | undefined => {
  let entries: Array<string>
  try {
    entries = readdirSync("/proc").filter((e) => /^\d+$/.test(e))
  } catch {
    return undefined
  }
  const parent = new Map<number, number>()
  const cpu = new Map<number, number>()
  for (const entry of entries) {
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8")
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      parent.set(Number(entry), Number(fields[1]))
      // utime, stime, and the cutime, cstime of children already reaped.
      cpu.set(Number(entry), Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]))
    } catch {
      // gone meanwhile
    }
  }
  const inTree = (pid: number): boolean => {
    for (let p: number | undefined = pid, hops = 0; p !== undefined && p > 0 && hops < 64; p = parent.get(p), hops++) {
      if (p === root) return true
    }
    return false
  }
  let ticks = 0
  for (const [pid, used] of cpu) if (inTree(pid)) ticks += used
  return ticks / ticksPerSecond
}

/**
 * Starts measuring how much CPU went to work other than this harness and the processes it started (the servers,
 * redis-server and anything they fork): on a shared machine, what someone else's work took away from the numbers.
 */
export const otherLoad = () => {
  const machine0 = machineBusySeconds()
  const ours0 = treeCpuSeconds()
  const began = performance.now()
  /** Average cores busy with other work since the start; undefined without /proc. */
  return (): number | undefined => {
    const machine1 = machineBusySeconds()
    const ours1 = treeCpuSeconds()
    if (machine0 === undefined || machine1 === undefined || ours0 === undefined || ours1 === undefined) return undefined
    const seconds = (performance.now() - began) / 1000
    return Math.max(0, (machine1 - machine0 - (ours1 - ours0)) / seconds)
  }
}
