import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Context, Duration, Effect, Exit, TestClock } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { request } from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { OptionId, PollId, StoreUnavailable } from "../src/Domain.js"
import * as Metrics from "../src/Metrics.js"
import * as RedisClient from "../src/RedisClient.js"
import * as Cached from "../src/VoteStore/Cached.js"
import * as Journal from "../src/VoteStore/Journal.js"
import * as WriteBehind from "../src/VoteStore/WriteBehind.js"
import { IN_MEMORY, makeMemory, type VoteStoreShape } from "../src/VoteStore.js"
import { type Exposition, metricOf, parseExposition, sumOf } from "./support/exposition.js"
import { type InProcessApp, startInProcess } from "./support/inProcess.js"
import { freePort, type RedisServer, startRedis } from "./support/redis.js"
import { eventually } from "./support/wait.js"

const poll = (id: string) => PollId.make(id)
const option = (id: string) => OptionId.make(id)

const scrapeOf = (metrics: Metrics.MetricsShape) =>
  Effect.promise(() => metrics.scrape().then((s) => parseExposition(s.body)))

/** The app's own metrics: not prom-client's default process and Node ones. */
const own = (name: string) => !/^livepoll_(process|nodejs)_/.test(name)

describe("Metrics: names", () => {
  it("are valid, prefixed livepoll_, in base units, with _total on counters and only there", async () => {
    const e = parseExposition((await Metrics.make().scrape()).body)
    const names = [...e.types.keys()]
    expect(names.length).toBeGreaterThan(30)
    for (const name of names) {
      expect(name).toMatch(/^[a-zA-Z_:][a-zA-Z0-9_:]*$/)
      expect(name.startsWith("livepoll_")).toBe(true)
      expect(name).not.toMatch(/_(ms|milliseconds|microseconds|kilobytes|megabytes|minutes|hours)(_|$)/)
      if (/duration|_lag/.test(name)) expect(name).toMatch(/_seconds$/)
      if (e.types.get(name) === "counter") expect(name).toMatch(/_total$/)
    }
    for (const name of names.filter(own)) {
      expect(e.help.get(name)?.length ?? 0).toBeGreaterThan(10)
      if (e.types.get(name) !== "counter") expect(name).not.toMatch(/_total$/)
    }
    // The default metrics, event-loop lag among them, under the same prefix.
    expect(names).toEqual(
      expect.arrayContaining([
        "livepoll_nodejs_eventloop_lag_seconds",
        "livepoll_nodejs_eventloop_lag_p99_seconds",
        "livepoll_process_cpu_user_seconds_total",
        "livepoll_process_resident_memory_bytes",
        "livepoll_nodejs_heap_size_used_bytes",
        "livepoll_nodejs_gc_duration_seconds"
      ])
    )
  })

  it("a family stops growing at MAX_SERIES and counts what is past it under other", async () => {
    const metrics = Metrics.make()
    const codes = Array.from({ length: Metrics.MAX_SERIES + 200 }, (_, i) => `code_${i}`)
    for (const code of codes) metrics.voteRefused(code)
    metrics.voteRefused("code_0")
    const e = parseExposition((await metrics.scrape()).body)
    const series = e.samples.filter((s) => s.name === "livepoll_votes_refused_total")
    expect(series.length).toBe(Metrics.MAX_SERIES + 1)
    expect(sumOf(e, "livepoll_votes_refused_total", { reason: "other" })).toBe(200)
    expect(sumOf(e, "livepoll_votes_refused_total", { reason: "code_0" })).toBe(2)
    expect(sumOf(e, "livepoll_votes_refused_total")).toBe(codes.length + 1)
  })

  it("requests too: past MAX_SERIES routes and statuses, they are counted under other, the count and histogram alike", async () => {
    const metrics = Metrics.make()
    for (let i = 0; i < Metrics.MAX_SERIES + 50; i++)
      metrics.requestObserved(`route_${i % 100}`, 200 + Math.floor(i / 100), 0.001)
    metrics.requestObserved("route_0", 200, 0.002)
    const e = parseExposition((await metrics.scrape()).body)
    expect(e.samples.filter((s) => s.name === "livepoll_http_requests_total").length).toBe(Metrics.MAX_SERIES + 1)
    expect(sumOf(e, "livepoll_http_requests_total", { route: "other", status: "other" })).toBe(50)
    expect(sumOf(e, "livepoll_http_request_duration_seconds_count", { route: "other", status: "other" })).toBe(50)
    expect(sumOf(e, "livepoll_http_requests_total", { route: "route_0", status: "200" })).toBe(2)
    expect(sumOf(e, "livepoll_http_request_duration_seconds_sum", { route: "route_0", status: "200" })).toBeCloseTo(
      0.003,
      9
    )
  })
})

describe("Metrics: the store layers", () => {
  const FLUSH = Duration.seconds(1)

  it.scoped("write-behind: buffered votes and entries per node, then the flush's batch, votes and duration", () =>
    Effect.gen(function* () {
      const metrics = Metrics.make()
      const store = yield* WriteBehind.make(yield* makeMemory, { flushInterval: FLUSH }).pipe(
        Effect.provideService(Metrics.Metrics, metrics)
      )
      yield* store.vote(poll("p"), option("A"))
      yield* store.vote(poll("p"), option("A"))
      yield* store.vote(poll("p"), option("B"))
      const before = yield* scrapeOf(metrics)
      expect(sumOf(before, "livepoll_buffered_votes", { node: IN_MEMORY })).toBe(3)
      expect(sumOf(before, "livepoll_buffered_entries", { node: IN_MEMORY })).toBe(2)
      expect(sumOf(before, "livepoll_buffer_max_entries")).toBe(200_000)
      expect(sumOf(before, "livepoll_flush_batches_total", { node: IN_MEMORY })).toBe(0)

      yield* TestClock.adjust(FLUSH)
      const after = yield* scrapeOf(metrics)
      expect(sumOf(after, "livepoll_buffered_votes", { node: IN_MEMORY })).toBe(0)
      expect(sumOf(after, "livepoll_buffered_entries", { node: IN_MEMORY })).toBe(0)
      expect(sumOf(after, "livepoll_flush_batches_total", { node: IN_MEMORY })).toBe(1)
      expect(sumOf(after, "livepoll_flushed_votes_total", { node: IN_MEMORY })).toBe(3)
      expect(sumOf(after, "livepoll_flush_failures_total", { node: IN_MEMORY })).toBe(0)
      expect(sumOf(after, "livepoll_flush_retries_total", { node: IN_MEMORY })).toBe(0)
      expect(sumOf(after, "livepoll_flush_duration_seconds_count", { node: IN_MEMORY })).toBe(1)
      expect(sumOf(after, "livepoll_flush_duration_seconds_bucket", { node: IN_MEMORY, le: "+Inf" })).toBe(1)
    })
  )

  it.scoped("write-behind: a batch the store refuses counts its retries and one failure, and stays buffered", () =>
    Effect.gen(function* () {
      const metrics = Metrics.make()
      const memory = yield* makeMemory
      let down = true
      const failing: VoteStoreShape = {
        ...memory,
        partitionOf: () => "shard_a",
        applyBatch: (batch) =>
          down ? new StoreUnavailable({ node: "shard_a", reason: "refused" }) : memory.applyBatch(batch)
      }
      const store = yield* WriteBehind.make(failing, { flushInterval: FLUSH, flushRetries: 2 }).pipe(
        Effect.provideService(Metrics.Metrics, metrics)
      )
      // Before the buffer's own finalizer: its shutdown flush then succeeds instead of retrying on the test clock.
      yield* Effect.addFinalizer(() => Effect.sync(() => (down = false)))
      yield* store.vote(poll("p"), option("A"))
      yield* TestClock.adjust(Duration.sum(FLUSH, Duration.millis(400)))
      const e = yield* scrapeOf(metrics)
      expect(sumOf(e, "livepoll_flush_failures_total", { node: "shard_a" })).toBe(1)
      expect(sumOf(e, "livepoll_flush_retries_total", { node: "shard_a" })).toBe(2)
      expect(sumOf(e, "livepoll_flush_batches_total", { node: "shard_a" })).toBe(0)
      expect(sumOf(e, "livepoll_buffered_votes", { node: "shard_a" })).toBe(1)
    })
  )

  it.scoped("write-behind: a closed buffer no longer reports what it held", () =>
    Effect.gen(function* () {
      const metrics = Metrics.make()
      yield* Effect.scoped(
        Effect.flatMap(WriteBehind.make(yield* makeMemory, { flushInterval: FLUSH }), (store) =>
          store.vote(poll("p"), option("A"))
        ).pipe(Effect.provideService(Metrics.Metrics, metrics))
      )
      const e = yield* scrapeOf(metrics)
      expect(e.samples.filter((s) => s.name === "livepoll_buffered_votes")).toEqual([])
      expect(sumOf(e, "livepoll_buffer_max_entries")).toBe(0)
      expect(sumOf(e, "livepoll_flushed_votes_total", { node: IN_MEMORY })).toBe(1)
    })
  )

  it.effect("results cache: a hit within the time-to-live, a miss before and after it", () =>
    Effect.gen(function* () {
      const metrics = Metrics.make()
      const store = yield* Cached.make(yield* makeMemory, { ttl: Duration.seconds(5) }).pipe(
        Effect.provideService(Metrics.Metrics, metrics)
      )
      yield* store.results(poll("p"))
      yield* store.results(poll("p"))
      yield* store.results(poll("p"))
      yield* TestClock.adjust(Duration.seconds(6))
      yield* store.results(poll("p"))
      const e = yield* scrapeOf(metrics)
      expect(sumOf(e, "livepoll_cache_hits_total", { cache: "results" })).toBe(2)
      expect(sumOf(e, "livepoll_cache_misses_total", { cache: "results" })).toBe(2)
    })
  )

  it.effect("a layer built with no Metrics provided records into the process's own", () =>
    Effect.gen(function* () {
      const fallback = Metrics.of(Context.empty())
      const hits = (e: Exposition) => sumOf(e, "livepoll_cache_hits_total", { cache: "results" }) ?? 0
      const before = hits(yield* scrapeOf(fallback))
      const store = yield* Cached.make(yield* makeMemory, { ttl: Duration.seconds(5) })
      yield* store.results(poll("p"))
      yield* store.results(poll("p"))
      expect(hits(yield* scrapeOf(fallback)) - before).toBe(1)
    })
  )

  it.scoped("journal: each group commit's fdatasync is timed", () =>
    Effect.gen(function* () {
      const metrics = Metrics.make()
      const dir = mkdtempSync(join(tmpdir(), "livepoll-metrics-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const journal = yield* Journal.makeFile(dir).pipe(Effect.provideService(Metrics.Metrics, metrics))
      yield* journal.append(poll("p"), option("A"), () => {})
      yield* journal.append(poll("p"), option("B"), () => {})
      const e = yield* scrapeOf(metrics)
      expect(sumOf(e, "livepoll_journal_fsync_duration_seconds_count")).toBe(2)
      expect(sumOf(e, "livepoll_journal_fsync_duration_seconds_sum")).toBeGreaterThan(0)
    })
  )

  it.scoped("Redis: a node's errors are there at 0 once it is acquired, and count each failed call by reason", () =>
    Effect.gen(function* () {
      const metrics = Metrics.make()
      const port = yield* Effect.promise(() => freePort())
      const node = { url: `redis://127.0.0.1:${port}`, name: "nowhere", commandTimeoutMs: 200 }
      const client = yield* RedisClient.acquire(node).pipe(Effect.provideService(Metrics.Metrics, metrics))
      const zero = yield* scrapeOf(metrics)
      for (const reason of ["timeout", "not_connected", "error"]) {
        expect(sumOf(zero, "livepoll_redis_command_errors_total", { node: "nowhere", reason })).toBe(0)
      }
      const call = RedisClient.caller(node)
      const failed = (run: () => Promise<unknown>) =>
        Effect.exit(call("PING", run)).pipe(Effect.provideService(Metrics.Metrics, metrics))
      // Nothing listens there: ioredis refuses the command at once (no offline queue).
      expect(Exit.isFailure(yield* failed(() => client.ping()))).toBe(true)
      yield* failed(() => Promise.reject(new Error("Command timed out")))
      yield* failed(() => Promise.reject(new Error("ERR something else")))
      yield* failed(() => Promise.reject(new Error("ERR something else")))
      expect(Exit.isSuccess(yield* failed(() => Promise.resolve("PONG")))).toBe(true)
      const e = yield* scrapeOf(metrics)
      expect(sumOf(e, "livepoll_redis_command_errors_total", { node: "nowhere", reason: "not_connected" })).toBe(1)
      expect(sumOf(e, "livepoll_redis_command_errors_total", { node: "nowhere", reason: "timeout" })).toBe(1)
      expect(sumOf(e, "livepoll_redis_command_errors_total", { node: "nowhere", reason: "error" })).toBe(2)
    })
  )
})

// ---------------------------------------------------------------------------------------------------------------------
// The app in this process, composed as main.ts composes it.

const get = async (app: InProcessApp, path: string, init?: RequestInit) => {
  const response = await fetch(`${app.baseUrl}${path}`, init)
  return { status: response.status, contentType: response.headers.get("content-type"), text: await response.text() }
}
const vote = (app: InProcessApp, pollId: string, body: unknown) =>
  get(app, `/api/v1/vote/${pollId}`, { method: "POST", body: typeof body === "string" ? body : JSON.stringify(body) })
const scrape = async (app: InProcessApp) => parseExposition((await get(app, "/metrics")).text)

/** What moved between two scrapes: the difference of one sum. */
const delta = (before: Exposition, after: Exposition, name: string, labels: Readonly<Record<string, string>> = {}) =>
  (sumOf(after, name, labels) ?? 0) - (sumOf(before, name, labels) ?? 0)

describe("Metrics: the memory stage's app", () => {
  let app: InProcessApp
  beforeAll(async () => {
    app = await startInProcess({ POLL_STAGE: "memory" })
  })
  afterAll(async () => {
    await app?.close()
  })

  it("GET /metrics answers Prometheus' text format, under /api/v1 too, and HEAD answers as GET without a body", async () => {
    for (const path of ["/metrics", "/api/v1/metrics"]) {
      const reply = await get(app, path)
      expect(reply.status).toBe(200)
      expect(reply.contentType).toBe("text/plain; version=0.0.4; charset=utf-8")
      expect(reply.text).toContain("# TYPE livepoll_http_requests_total counter")
      expect(reply.text).toContain("# TYPE livepoll_nodejs_eventloop_lag_seconds gauge")
      expect(parseExposition(reply.text).samples.length).toBeGreaterThan(50)
    }
    const head = await get(app, "/metrics", { method: "HEAD" })
    expect(head).toEqual({ status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", text: "" })
    expect((await get(app, "/metrics", { method: "POST" })).status).toBe(405)
  })

  it("counts requests by route and status, with their durations, and votes accepted and refused by reason", async () => {
    const before = await scrape(app)
    for (let i = 0; i < 5; i++) expect((await vote(app, "m-1", { option_id: "A" })).status).toBe(200)
    expect((await vote(app, "m-1", '{"option_id": ')).status).toBe(400)
    expect((await vote(app, "m 1", { option_id: "A" })).status).toBe(400)
    expect((await get(app, "/results/m-1")).status).toBe(200)
    expect((await get(app, "/nowhere/at/all")).status).toBe(404)
    expect((await get(app, "/results/m-1", { method: "DELETE" })).status).toBe(405)
    const after = await scrape(app)

    const requests = (route: string, status: string) =>
      delta(before, after, "livepoll_http_requests_total", { route, status })
    expect(requests("Vote", "200")).toBe(5)
    expect(requests("Vote", "400")).toBe(2)
    expect(requests("Results", "200")).toBe(1)
    expect(requests("unmatched", "404")).toBe(1)
    expect(requests("unmatched", "405")).toBe(1)
    const durations = (suffix: string, labels: Record<string, string>) =>
      delta(before, after, `livepoll_http_request_duration_seconds_${suffix}`, labels)
    expect(durations("count", { route: "Vote", status: "200" })).toBe(5)
    expect(durations("bucket", { route: "Vote", status: "200", le: "+Inf" })).toBe(5)
    expect(durations("sum", { route: "Vote", status: "200" })).toBeGreaterThan(0)
    // Cumulative buckets: each at least the one below it, the last the count.
    const buckets = after.samples.filter(
      (s) =>
        s.name === "livepoll_http_request_duration_seconds_bucket" &&
        s.labels.route === "Vote" &&
        s.labels.status === "200"
    )
    expect(buckets.map((b) => b.value)).toEqual([...buckets.map((b) => b.value)].sort((a, b) => a - b))

    expect(delta(before, after, "livepoll_votes_accepted_total")).toBe(5)
    expect(delta(before, after, "livepoll_votes_refused_total", { reason: "invalid_json" })).toBe(1)
    expect(delta(before, after, "livepoll_votes_refused_total", { reason: "invalid_poll_id" })).toBe(1)
  })

  it("counts the definitions cache of a defined poll's votes", async () => {
    const created = await get(app, "/api/v1/polls", {
      method: "POST",
      body: JSON.stringify({
        id: "m-defined",
        question: "Which?",
        options: [
          { id: "A", label: "A" },
          { id: "B", label: "B" }
        ]
      })
    })
    expect(created.status).toBe(201)
    const before = await scrape(app)
    for (let i = 0; i < 3; i++) expect((await vote(app, "m-defined", { option_id: "A" })).status).toBe(200)
    expect((await vote(app, "m-defined", { option_id: "Z" })).status).toBe(422)
    const after = await scrape(app)
    const lookups =
      delta(before, after, "livepoll_cache_hits_total", { cache: "definitions" }) +
      delta(before, after, "livepoll_cache_misses_total", { cache: "definitions" })
    expect(lookups).toBe(4)
    expect(delta(before, after, "livepoll_cache_hits_total", { cache: "definitions" })).toBeGreaterThanOrEqual(3)
    expect(delta(before, after, "livepoll_votes_refused_total", { reason: "unknown_option" })).toBe(1)
  })

  it("keeps its labels bounded: votes on many polls by many voters add no series and name none of them", async () => {
    const round = async (tag: string, n: number) => {
      for (let i = 0; i < n; i++) {
        expect(
          (await vote(app, `bound-${tag}-${i}`, { option_id: `opt-${tag}-${i}`, voter_id: `v-${tag}-${i}` })).status
        ).toBe(200)
        expect((await vote(app, `bound-${tag}-${i}`, `{"option_id": "${tag}${i}`)).status).toBe(400)
        expect((await get(app, `/results/bound-${tag}-${i}`)).status).toBe(200)
        expect((await get(app, `/results/bound-${tag}-${i}/more-${i}`)).status).toBe(404)
        expect((await get(app, `/polls/bound-${tag}-${i}`)).status).toBe(404)
      }
    }
    const series = (e: Exposition) => e.samples.filter((s) => own(s.name)).length
    await round("warm", 2)
    const few = series(await scrape(app))
    await round("many", 300)
    const e = await scrape(app)
    expect(series(e)).toBe(few)
    const values = e.samples.filter((s) => own(s.name)).flatMap((s) => Object.values(s.labels))
    expect(values.filter((v) => /bound-|opt-|v-many|v-warm|more-/.test(v))).toEqual([])
    for (const [name, type] of e.types) {
      if (!own(name)) continue
      const labels = new Set(
        e.samples.filter((s) => metricOf(e, s.name) === name).flatMap((s) => Object.keys(s.labels))
      )
      labels.delete(type === "histogram" ? "le" : "")
      expect([...labels].filter((l) => !["route", "status", "reason", "policy", "cache", "node"].includes(l))).toEqual(
        []
      )
    }
  })

  it("counts the live streams open", async () => {
    const open = async () => sumOf(await scrape(app), "livepoll_live_streams_open") ?? -1
    const base = await open()
    const stream = await new Promise<{ close: () => void }>((resolve, reject) => {
      const req = request(`${app.baseUrl}/api/v1/polls/m-stream/stream`, (res) => {
        expect(res.statusCode).toBe(200)
        res.once("data", () => resolve({ close: () => req.destroy() }))
      })
      req.on("error", reject)
      req.end()
    })
    expect(await open()).toBe(base + 1)
    stream.close()
    expect(await eventually(open, (n) => n === base, 5000)).toBe(base)
    const e = await scrape(app)
    expect(sumOf(e, "livepoll_http_requests_total", { route: "Stream", status: "200" })).toBeGreaterThanOrEqual(1)
  })
})

// ---------------------------------------------------------------------------------------------------------------------
// Every stage: the same metrics, moving, over real redis-servers.

describe("Metrics: in every stage", () => {
  let single: RedisServer
  let second: RedisServer
  beforeAll(async () => {
    ;[single, second] = await Promise.all([startRedis(), startRedis()])
  })
  afterAll(async () => {
    await Promise.all([single?.stop(), second?.stop()])
  })

  const NODES = {
    memory: [],
    redis: ["redis"],
    cached: ["redis"],
    batched: ["redis"],
    sharded: ["shard_a", "shard_b"],
    full: ["shard_a", "shard_b"]
  } as const
  const BUFFERED = new Set(["batched", "full"])
  const CACHED = new Set(["cached", "full"])

  it.each(Object.keys(NODES) as Array<keyof typeof NODES>)(
    "%s: requests, votes, caches, buffer and flushes, Redis nodes",
    async (stage) => {
      const app = await startInProcess({
        POLL_STAGE: stage,
        REDIS_URL: single.url,
        REDIS_NODES: `shard_a=${single.url},shard_b=${second.url}`,
        FLUSH_INTERVAL_MS: "200"
      })
      try {
        const polls = Array.from({ length: 6 }, (_, i) => `stage-${stage}-${i}`)
        for (const p of polls)
          for (const o of ["A", "B"]) expect((await vote(app, p, { option_id: o })).status).toBe(200)
        for (const p of polls) for (let i = 0; i < 2; i++) expect((await get(app, `/results/${p}`)).status).toBe(200)
        const e = await scrape(app)
        expect(sumOf(e, "livepoll_votes_accepted_total")).toBe(12)
        expect(sumOf(e, "livepoll_http_requests_total", { route: "Vote", status: "200" })).toBe(12)
        expect(sumOf(e, "livepoll_http_requests_total", { route: "Results", status: "200" })).toBe(12)
        for (const node of NODES[stage]) {
          expect(sumOf(e, "livepoll_redis_command_errors_total", { node })).toBe(0)
        }
        if (CACHED.has(stage)) expect(sumOf(e, "livepoll_cache_hits_total", { cache: "results" })).toBeGreaterThan(0)
        else expect(sumOf(e, "livepoll_cache_hits_total", { cache: "results" })).toBeUndefined()
        if (BUFFERED.has(stage)) {
          const flushed = await eventually(
            () => scrape(app),
            (s) => sumOf(s, "livepoll_flushed_votes_total") === 12,
            10_000
          )
          expect(sumOf(flushed, "livepoll_flushed_votes_total")).toBe(12)
          expect(sumOf(flushed, "livepoll_buffered_votes")).toBe(0)
          expect(sumOf(flushed, "livepoll_flush_batches_total")).toBeGreaterThan(0)
          const flushedNodes = flushed.samples.filter((s) => s.name === "livepoll_flush_batches_total")
          expect(flushedNodes.map((s) => s.labels.node).sort()).toEqual([...NODES[stage]].sort())
        } else expect(sumOf(e, "livepoll_flush_batches_total")).toBeUndefined()
      } finally {
        await app.close()
      }
    },
    30_000
  )
})
