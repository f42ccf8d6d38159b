import { Effect, ManagedRuntime, Runtime } from "effect"
import { EventEmitter } from "node:events"
import type { ServerResponse } from "node:http"
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest"
import type { PollId } from "../src/Domain.js"
import * as Feed from "../src/Feed.js"
import * as LiveResults from "../src/LiveResults.js"
import { eventually, sleep } from "./support/wait.js"

/** A response whose socket is as backed up as the test says: `write` answers `accepting`, `drain` comes on demand. */
class FakeResponse extends EventEmitter {
  readonly written: Array<string> = []
  accepting = true
  ended = false
  writeHead() {
    return this
  }
  write(chunk: string) {
    this.written.push(chunk)
    return this.accepting
  }
  end() {
    this.ended = true
    this.emit("close")
  }
  /** The results events written so far, as their data. */
  events() {
    return this.written.filter((w) => w.startsWith("event: results")).map((w) => JSON.parse(w.split("data: ")[1]!))
  }
}

let managed: ManagedRuntime.ManagedRuntime<Feed.Feed, never>
let runtime: Runtime.Runtime<Feed.Feed>
let results: Record<string, number> = {}

beforeAll(async () => {
  managed = ManagedRuntime.make(Feed.layerLocal)
  runtime = await managed.runtime()
})
afterAll(() => managed.dispose())

const hubOf = (maxStreams: number) =>
  // The hub's read is this test's: its type asks for the app's services, which the read here does not use.
  LiveResults.makeHub(runtime as Runtime.Runtime<any>, () => Effect.sync(() => ({ results: { ...results } })), {
    maxStreams
  })

const changed = (pollId: PollId) => Runtime.runPromise(runtime)(Effect.flatMap(Feed.Feed, (feed) => feed.local(pollId)))

const until = (what: string, condition: () => boolean, timeoutMs = 2000) =>
  eventually(async () => (condition() ? true : undefined), { what, timeoutMs, intervalMs: 10 })
const settle = () => sleep(LiveResults.MIN_UPDATE_INTERVAL_MS * 2)

describe("a client whose socket is backed up", () => {
  it("gets each event once: a drain sends only a newer one, and at most one waits in its buffer", async () => {
    const hub = hubOf(10)
    const pollId = "slow" as PollId
    results = { A: 1 }
    const res = new FakeResponse()
    // Every write reports a full buffer, as a write of an event larger than the socket's buffer does.
    res.accepting = false
    expect(hub.attach(pollId, res as unknown as ServerResponse)).toBe(true)
    await until("the first event", () => res.events().length === 1)

    // Drains with nothing new send nothing (they used to send the same event again, each time).
    for (let i = 0; i < 5; i++) res.emit("drain")
    expect(res.events()).toEqual([{ results: { A: 1 } }])

    // The buffer has drained: the next change goes out at once, and backs the socket up again.
    results = { A: 2 }
    await changed(pollId)
    await until("the second event", () => res.events().length === 2)
    // A change while it is backed up waits: one event at most sits in the client's buffer.
    results = { A: 3 }
    await changed(pollId)
    await settle()
    results = { A: 4 }
    await changed(pollId)
    await settle()
    expect(res.events()).toEqual([{ results: { A: 1 } }, { results: { A: 2 } }])

    // The drain sends the latest only, once.
    res.emit("drain")
    expect(res.events()).toEqual([{ results: { A: 1 } }, { results: { A: 2 } }, { results: { A: 4 } }])
    for (let i = 0; i < 5; i++) res.emit("drain")
    expect(res.events()).toHaveLength(3)
    hub.close()
  })

  it("does not hold up a client that keeps up", async () => {
    const hub = hubOf(10)
    const pollId = "mixed" as PollId
    results = { B: 1 }
    const slow = new FakeResponse()
    const quick = new FakeResponse()
    slow.accepting = false
    hub.attach(pollId, slow as unknown as ServerResponse)
    hub.attach(pollId, quick as unknown as ServerResponse)
    await until("the first events", () => slow.events().length === 1 && quick.events().length === 1)
    results = { B: 2 }
    await changed(pollId)
    await until("the quick client's update", () => quick.events().length === 2)
    expect(slow.events()).toHaveLength(1)
    hub.close()
  })
})

describe("the stream cap", () => {
  it("refuses a stream past maxStreams, and frees the place when one closes", () => {
    const hub = hubOf(2)
    const pollId = "capped" as PollId
    const [a, b, c] = [new FakeResponse(), new FakeResponse(), new FakeResponse()]
    expect(hub.attach(pollId, a as unknown as ServerResponse)).toBe(true)
    expect(hub.full()).toBe(false)
    expect(hub.attach(pollId, b as unknown as ServerResponse)).toBe(true)
    expect(hub.full()).toBe(true)
    expect(hub.attach(pollId, c as unknown as ServerResponse)).toBe(false)
    expect(c.written).toEqual([])
    a.emit("close")
    expect(hub.openStreams()).toBe(1)
    expect(hub.attach(pollId, c as unknown as ServerResponse)).toBe(true)
    hub.close()
  })
})

/** The hub's timers and clock on vitest's fake timers, for the length of `body`. */
const onFakeTimers = async (body: () => Promise<void>) => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"] })
  try {
    await body()
  } finally {
    vi.useRealTimers()
  }
}

describe("the stream's timing", () => {
  it("re-reads a poll's results at most every updateIntervalMs", () =>
    onFakeTimers(async () => {
      let reads = 0
      const hub = LiveResults.makeHub(
        runtime as Runtime.Runtime<any>,
        () => Effect.sync(() => (reads++, { results: { ...results } })),
        { maxStreams: 10, updateIntervalMs: 1000 }
      )
      const pollId = "paced" as PollId
      results = { A: 1 }
      const res = new FakeResponse()
      hub.attach(pollId, res as unknown as ServerResponse)
      await vi.advanceTimersByTimeAsync(0)
      expect(reads).toBe(1)
      expect(res.events()).toEqual([{ results: { A: 1 } }])

      // Ten times the default interval, and still no second read: the change waits for the configured one.
      results = { A: 2 }
      await changed(pollId)
      await vi.advanceTimersByTimeAsync(999)
      expect(reads).toBe(1)
      await vi.advanceTimersByTimeAsync(1)
      expect(reads).toBe(2)
      expect(res.events()).toEqual([{ results: { A: 1 } }, { results: { A: 2 } }])

      // A change long after the last read is sent at once.
      await vi.advanceTimersByTimeAsync(5000)
      results = { A: 3 }
      await changed(pollId)
      await vi.advanceTimersByTimeAsync(0)
      expect(reads).toBe(3)
      hub.close()
    }))

  it("sends every stream a keep-alive comment every heartbeatMs", () =>
    onFakeTimers(async () => {
      const hub = LiveResults.makeHub(
        runtime as Runtime.Runtime<any>,
        () => Effect.sync(() => ({ results: { ...results } })),
        { maxStreams: 10, heartbeatMs: 500 }
      )
      const res = new FakeResponse()
      hub.attach("quiet" as PollId, res as unknown as ServerResponse)
      const keepAlives = () => res.written.filter((w) => w.startsWith(": keep-alive")).length
      await vi.advanceTimersByTimeAsync(499)
      expect(keepAlives()).toBe(0)
      await vi.advanceTimersByTimeAsync(1)
      expect(keepAlives()).toBe(1)
      await vi.advanceTimersByTimeAsync(1000)
      expect(keepAlives()).toBe(3)
      hub.close()
    }))
})
