import { randomUUID } from "node:crypto"
import { createConnection } from "node:net"
import type { Redis } from "ioredis"
import type { CommandCounts } from "./commandstats.js"

export interface Watch {
  /** Stops watching; resolves with the commands clients sent meanwhile, by name (those scripts ran not included). */
  readonly stop: () => Promise<CommandCounts>
}

/**
 * Counts the commands that reach a Redis node from its clients, by name, using MONITOR. Commands a Lua script runs are
 * shown by MONITOR as `[0 lua]` and left out, which is what INFO commandstats cannot do: it counts both alike.
 * ECHO markers sent through `admin` bound the count, so nothing before `watch` resolves or after `stop` is counted.
 */
export const watch = async (port: number, admin: Redis): Promise<Watch> => {
  const marker = `livepoll-bench-${randomUUID()}`
  const counts = new Map<string, number>()
  const socket = createConnection({ port, host: "127.0.0.1" })
  let partial = ""
  let state: "connecting" | "waiting" | "counting" | "done" = "connecting"
  let onState: () => void = () => {}
  const count = (line: string) => {
    if (state === "waiting") {
      if (line.includes(`"${marker}-begin"`)) state = "counting"
      return
    }
    if (line.includes(`"${marker}-end"`)) {
      state = "done"
      return
    }
    // +1700000000.123456 [0 127.0.0.1:50000] "evalsha" "..." ...; a script's own commands show [0 lua].
    const close = line.indexOf('] "')
    if (close === -1 || line.slice(close - 4, close) === " lua") return
    const end = line.indexOf('"', close + 3)
    const name = line.slice(close + 3, end).toLowerCase()
    counts.set(name, (counts.get(name) ?? 0) + 1)
  }
  socket.on("data", (chunk: Buffer) => {
    const lines = (partial + chunk.toString("latin1")).split("\r\n")
    partial = lines.pop()!
    for (const line of lines) {
      if (state === "connecting") {
        if (line === "+OK") state = "waiting"
      } else if (state !== "done") count(line)
    }
    onState()
  })
  socket.on("error", () => {})
  const until = (what: string, reached: () => boolean) =>
    new Promise<void>((resolve, reject) => {
      if (reached()) return resolve()
      const timer = setTimeout(() => reject(new Error(`MONITOR on port ${port}: no ${what} within 5 s`)), 5000)
      onState = () => {
        if (!reached()) return
        clearTimeout(timer)
        onState = () => {}
        resolve()
      }
    })
  socket.write("MONITOR\r\n")
  try {
    await until("+OK", () => state !== "connecting")
    await admin.echo(`${marker}-begin`)
    await until("begin marker", () => state !== "waiting")
  } catch (error) {
    socket.destroy()
    throw error
  }
  return {
    stop: async () => {
      try {
        await admin.echo(`${marker}-end`)
        await until("end marker", () => state === "done")
        return counts
      } finally {
        socket.destroy()
      }
    }
  }
}

/** Adds up the counts of several nodes. */
export const sum = (all: ReadonlyArray<CommandCounts>): CommandCounts => {
  const total = new Map<string, number>()
  for (const counts of all) for (const [name, n] of counts) total.set(name, (total.get(name) ?? 0) + n)
  return total
}
