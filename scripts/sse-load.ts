/**
 * `npx tsx scripts/sse-load.ts`: many live-results streams on one instance. Starts the app (`memory` stage) on a free
 * port, opens SSE_CLIENTS concurrent streams on one poll (default 1000), casts votes, checks that every client received
 * every update, and reports the app's resident memory before, during and after, and how long an update takes to reach
 * all clients. Exits 1 if any client missed an update or a stream was refused.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { type ClientRequest, request } from "node:http"
import { createServer } from "node:net"
import { fileURLToPath } from "node:url"
import { setTimeout as sleep } from "node:timers/promises"

const ROOT = fileURLToPath(new URL("..", import.meta.url))
const CLIENTS = Number(process.env.SSE_CLIENTS ?? 1000)
/** Single votes, each awaited until every client has it: the latency of one update to everyone. */
const SINGLE_VOTES = 10
/** Then a burst of votes as fast as they go: every client must end on the exact total. */
const BURST_VOTES = 1000
const UPDATE_TIMEOUT_MS = 10_000

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 0))
    })
  })

/** Resident set size of a process in MiB, from /proc (Linux). */
const rssMiB = (pid: number) => {
  const line = readFileSync(`/proc/${pid}/status`, "utf8")
    .split("\n")
    .find((l) => l.startsWith("VmRSS:"))
  return line === undefined ? NaN : Number(line.replace(/\D+/g, "")) / 1024
}

/** Established server-side connections on the app's port. */
const connectionsOn = (port: number) => {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`
  return readFileSync("/proc/net/tcp", "utf8")
    .split("\n")
    .filter((line) => {
      const fields = line.trim().split(/\s+/)
      return fields[1] === local && fields[3] === "01"
    }).length
}

interface Client {
  /** The total of the latest event, and when it arrived. */
  total: number
  at: number
  events: number
  readonly req: ClientRequest
}

const startApp = async (port: number): Promise<ChildProcess> => {
  // One process (node with the tsx loader), so its pid is the app whose memory is measured.
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], {
    cwd: ROOT,
    env: { ...process.env, POLL_STAGE: "memory", PORT: String(port), HOST: "127.0.0.1" },
    stdio: ["ignore", "ignore", "inherit"]
  })
  const deadline = Date.now() + 30_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the app exited with code ${child.exitCode}`)
    try {
      if ((await fetch(`http://127.0.0.1:${port}/`)).ok) return child
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error("the app did not start within 30 s")
    await sleep(50)
  }
}

const openClient = (port: number, pollId: string, clients: Array<Client>, refused: Array<number>) =>
  new Promise<void>((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path: `/api/v1/polls/${pollId}/stream`, agent: false }, (res) => {
      if (res.statusCode !== 200) {
        refused.push(res.statusCode ?? 0)
        res.resume()
        return resolve()
      }
      const client: Client = { total: -1, at: 0, events: 0, req }
      clients.push(client)
      let buffer = ""
      res.setEncoding("utf8")
      res.on("data", (chunk: string) => {
        buffer += chunk
        for (let end = buffer.indexOf("\n\n"); end !== -1; end = buffer.indexOf("\n\n")) {
          const data = buffer
            .slice(0, end)
            .split("\n")
            .find((line) => line.startsWith("data: "))
          buffer = buffer.slice(end + 2)
          if (data === undefined) continue
          const results: Record<string, number> = JSON.parse(data.slice(6)).results
          client.total = Object.values(results).reduce((s, n) => s + n, 0)
          client.at = performance.now()
          client.events++
          if (client.events === 1) resolve()
        }
      })
      res.on("error", () => {})
    })
    req.on("error", reject)
    req.end()
  })

/** Waits until every client's latest event shows `total`; returns the ms from `since` to the last arrival. */
const allReach = async (clients: ReadonlyArray<Client>, total: number, since: number) => {
  const deadline = Date.now() + UPDATE_TIMEOUT_MS
  for (;;) {
    const behind = clients.filter((c) => c.total !== total).length
    if (behind === 0) {
      const arrivals = clients.map((c) => c.at - since).sort((a, b) => a - b)
      return { first: arrivals[0]!, median: arrivals[Math.floor(arrivals.length / 2)]!, last: arrivals.at(-1)! }
    }
    if (Date.now() > deadline) throw new Error(`${behind} of ${clients.length} clients never saw total ${total}`)
    await sleep(2)
  }
}

const vote = async (port: number, pollId: string, optionId: string) => {
  const response = await fetch(`http://127.0.0.1:${port}/api/v1/vote/${pollId}`, {
    method: "POST",
    body: JSON.stringify({ option_id: optionId })
  })
  if (response.status !== 200) throw new Error(`vote answered ${response.status}: ${await response.text()}`)
}

const main = async () => {
  const port = await freePort()
  const app = await startApp(port)
  const clients: Array<Client> = []
  const refused: Array<number> = []
  const row = (what: string, value: string) => console.log(`${what.padEnd(44)} ${value}`)
  try {
    const created = await fetch(`http://127.0.0.1:${port}/api/v1/polls`, {
      method: "POST",
      body: JSON.stringify({
        question: "Load test",
        options: ["A", "B", "C", "D"].map((id) => ({ id, label: `Option ${id}` }))
      })
    })
    if (created.status !== 201) throw new Error(`creating the poll answered ${created.status}: ${await created.text()}`)
    const pollId = ((await created.json()) as { id: string }).id
    await sleep(500)
    const before = rssMiB(app.pid!)
    row("app RSS before any stream", `${before.toFixed(1)} MiB`)

    const opening = performance.now()
    // Opened in groups, as a room of people arriving would, rather than 1000 handshakes in one tick.
    for (let i = 0; i < CLIENTS; i += 100) {
      await Promise.all(
        Array.from({ length: Math.min(100, CLIENTS - i) }, () => openClient(port, pollId, clients, refused))
      )
    }
    row(
      `${CLIENTS} streams open, first event each`,
      `${(performance.now() - opening).toFixed(0)} ms, ${refused.length} refused`
    )
    row("server-side connections", String(connectionsOn(port)))
    await sleep(500)
    const open = rssMiB(app.pid!)
    row(`app RSS with ${clients.length} streams`, `${open.toFixed(1)} MiB (+${(open - before).toFixed(1)} MiB)`)
    row("per stream", `${(((open - before) * 1024) / Math.max(1, clients.length)).toFixed(1)} KiB`)

    const firsts: Array<number> = []
    const lasts: Array<number> = []
    for (let i = 0; i < SINGLE_VOTES; i++) {
      const since = performance.now()
      await vote(port, pollId, "ABCD"[i % 4]!)
      const reached = await allReach(clients, i + 1, since)
      firsts.push(reached.first)
      lasts.push(reached.last)
      // Past the per-poll update interval, so each vote is its own event.
      await sleep(150)
    }
    const median = (values: Array<number>) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!
    row("one vote -> first client (median)", `${median(firsts).toFixed(1)} ms`)
    row(
      `one vote -> all ${clients.length} clients (median, max)`,
      `${median(lasts).toFixed(1)} ms, ${lasts.at(-1)!.toFixed(1)} ms`
    )

    const burstStart = performance.now()
    const senders = 20
    await Promise.all(
      Array.from({ length: senders }, async (_, s) => {
        for (let i = s; i < BURST_VOTES; i += senders) await vote(port, pollId, "ABCD"[i % 4]!)
      })
    )
    const sent = performance.now() - burstStart
    const burst = await allReach(clients, SINGLE_VOTES + BURST_VOTES, burstStart)
    const events = clients.reduce((s, c) => s + c.events, 0) / clients.length
    row(
      `burst of ${BURST_VOTES} votes`,
      `sent in ${sent.toFixed(0)} ms (${((BURST_VOTES / sent) * 1000).toFixed(0)}/s)`
    )
    row("  every client on the final total after", `${burst.last.toFixed(0)} ms from the burst's start`)
    row("  events per client in all (rate-capped)", events.toFixed(1))
    const during = rssMiB(app.pid!)
    row("app RSS after the votes", `${during.toFixed(1)} MiB`)

    for (const client of clients) client.req.destroy()
    const deadline = Date.now() + 5000
    while (connectionsOn(port) > 0 && Date.now() < deadline) await sleep(50)
    row("server-side connections after closing", String(connectionsOn(port)))
    await sleep(1000)
    row("app RSS after every stream closed", `${rssMiB(app.pid!).toFixed(1)} MiB`)
    if (refused.length > 0) throw new Error(`${refused.length} streams were refused: ${[...new Set(refused)]}`)
  } finally {
    for (const client of clients) client.req.destroy()
    app.kill("SIGTERM")
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error instanceof Error ? error.message : error)
    process.exit(1)
  }
)
