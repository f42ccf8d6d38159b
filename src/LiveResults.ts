import { Effect, Exit, Runtime } from "effect"
import type { ServerResponse } from "node:http"
import type { PollId } from "./Domain.js"
import { Feed } from "./Feed.js"
import * as Metrics from "./Metrics.js"
import type { Polls } from "./Polls.js"
import type { VoteStore } from "./VoteStore.js"

/** A poll's stream re-reads its results at most this often, however fast votes arrive (`STREAM_UPDATE_INTERVAL_MS`). */
export const MIN_UPDATE_INTERVAL_MS = 100
/** Every stream gets a comment line this often, so no proxy takes it for idle and closes it (`STREAM_HEARTBEAT_MS`). */
export const HEARTBEAT_MS = 15_000

export interface HubOptions {
  /** Streams open at once, at most; past it a new stream is refused. */
  readonly maxStreams: number
  /** A poll's results are re-read at most this often (`STREAM_UPDATE_INTERVAL_MS`). */
  readonly updateIntervalMs?: number | undefined
  /** Every stream gets a keep-alive comment this often (`STREAM_HEARTBEAT_MS`). */
  readonly heartbeatMs?: number | undefined
}

interface Client {
  readonly res: ServerResponse
  /** The socket is backed up: skip updates until it drains, then send the latest. */
  blocked: boolean
  /** The last event written to this client, so a drain sends only something newer. */
  sent: string | undefined
}

interface Watch {
  readonly clients: Set<Client>
  last: string | undefined
  lastReadAt: number
  timer: NodeJS.Timeout | undefined
  reading: boolean
  dirty: boolean
  unsubscribe: Effect.Effect<void>
}

export const STREAM_HEADERS = {
  "content-type": "text/event-stream",
  "cache-control": "no-cache",
  connection: "keep-alive",
  "x-accel-buffering": "no"
} as const

/**
 * Server-Sent Events of each poll's results. One watch per poll with listeners, however many: it waits for the
 * feed's change signals, re-reads at most every `updateIntervalMs` and sends only what differs from the last
 * event. A slow client is skipped while its socket is backed up and catches up with the latest event when it drains;
 * it never holds up the others, and never has more than one event waiting in its buffer. At most `maxStreams` are
 * open at once; past it a new stream is refused.
 */
type Services = Feed | Polls | VoteStore

export const makeHub = (
  runtime: Runtime.Runtime<Services>,
  read: (pollId: PollId) => Effect.Effect<unknown, unknown, Services>,
  options: HubOptions
) => {
  const updateIntervalMs = options.updateIntervalMs ?? MIN_UPDATE_INTERVAL_MS
  const runFork = Runtime.runFork(runtime)
  const metrics = Metrics.of(runtime.context)
  const watches = new Map<PollId, Watch>()
  let open = 0

  const frame = (data: string) => `event: results\ndata: ${data}\n\n`

  // A write that returns false has been buffered whole; nothing more goes to this client until its socket drains.
  const send = (client: Client, data: string) => {
    client.sent = data
    client.blocked = !client.res.write(frame(data))
  }

  const deliver = (watch: Watch, data: string) => {
    watch.last = data
    for (const client of watch.clients) if (!client.blocked) send(client, data)
  }

  const refresh = (pollId: PollId, watch: Watch) => {
    if (watch.reading) {
      watch.dirty = true
      return
    }
    watch.reading = true
    watch.dirty = false
    watch.lastReadAt = Date.now()
    runFork(read(pollId)).addObserver((exit) => {
      watch.reading = false
      if (Exit.isSuccess(exit)) {
        const data = JSON.stringify(exit.value)
        if (data !== watch.last) deliver(watch, data)
      }
      if (watch.dirty) schedule(pollId, watch)
    })
  }

  const schedule = (pollId: PollId, watch: Watch) => {
    if (watch.timer !== undefined || watches.get(pollId) !== watch) return
    const wait = Math.max(0, watch.lastReadAt + updateIntervalMs - Date.now())
    watch.timer = setTimeout(() => {
      watch.timer = undefined
      refresh(pollId, watch)
    }, wait)
  }

  const heartbeat = setInterval(() => {
    for (const watch of watches.values()) {
      for (const client of watch.clients) if (!client.blocked) client.blocked = !client.res.write(": keep-alive\n\n")
    }
  }, options.heartbeatMs ?? HEARTBEAT_MS)
  heartbeat.unref()

  const full = () => open >= options.maxStreams

  const attach = (pollId: PollId, res: ServerResponse): boolean => {
    if (full()) return false
    open++
    metrics.streamOpened()
    res.writeHead(200, STREAM_HEADERS)
    res.write("retry: 2000\n\n")
    let watch = watches.get(pollId)
    if (watch === undefined) {
      const created: Watch = {
        clients: new Set(),
        last: undefined,
        lastReadAt: 0,
        timer: undefined,
        reading: false,
        dirty: false,
        unsubscribe: Effect.void
      }
      watches.set(pollId, created)
      runFork(Effect.flatMap(Feed, (feed) => feed.subscribe(pollId, () => schedule(pollId, created)))).addObserver(
        (exit) => {
          if (Exit.isSuccess(exit)) created.unsubscribe = exit.value
        }
      )
      watch = created
    }
    const client: Client = { res, blocked: false, sent: undefined }
    watch.clients.add(client)
    const current = watch
    // Only news: a drain after the one event that backed the socket up must not send that event again.
    res.on("drain", () => {
      client.blocked = false
      if (current.last !== undefined && current.last !== client.sent) send(client, current.last)
    })
    res.on("close", () => {
      open--
      metrics.streamClosed()
      current.clients.delete(client)
      if (current.clients.size === 0 && watches.get(pollId) === current) {
        watches.delete(pollId)
        if (current.timer !== undefined) clearTimeout(current.timer)
        runFork(current.unsubscribe)
      }
    })
    // The current results at once: from the last event if there is one, otherwise a fresh read.
    if (watch.last !== undefined) send(client, watch.last)
    else refresh(pollId, watch)
    return true
  }

  const close = () => {
    clearInterval(heartbeat)
    for (const watch of watches.values()) for (const client of watch.clients) client.res.end()
  }

  return { attach, full, close, openStreams: () => open }
}
