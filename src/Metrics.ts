import { Context, Layer } from "effect"
import { collectDefaultMetrics, Counter, Gauge, type Histogram, Registry, validateMetricName } from "prom-client"

/**
 * Prometheus metrics of one app instance: prom-client's registry, with its default process and Node metrics (event-loop
 * lag included) and the app's own, every name prefixed `livepoll_`.
 *
 * The app's metrics are recorded in plain cells (a number, or a histogram's bucket array) that the code on the request
 * path holds bound once: a vote bumps a field and builds no string. prom-client reads the cells only when scraped. Its
 * own `labels(...).inc()` builds a label hash and validates the labels on every call, some 0.4 µs a counter and 1 µs a
 * histogram here: more than the rest of a hot vote's own steps (see the README's "Performance").
 *
 * Every label has a bounded set of values: route names of the route table, status codes, error codes, node names of
 * the configuration, cache names. No poll id, voter id, option id or address is ever a label; and should a caller
 * pass more distinct values than any of those sets has, a family stops growing at MAX_SERIES and counts the rest under
 * `other`.
 */

export const PREFIX = "livepoll_"

/** Label sets one family keeps at most; past it, values are counted under `other`. */
export const MAX_SERIES = 500
const OTHER = "other"

/** A counter's or a gauge's value for one label set. */
export interface Cell {
  value: number
}

/** A histogram's observations for one label set: counts per bucket (not cumulative), their sum and number. */
interface HistogramCell {
  readonly buckets: Float64Array
  sum: number
  count: number
}

/** The cells of one metric, one per label set, made on first use (off the hot path: callers keep the cell). */
class Family<C> {
  readonly series: Array<{ readonly labels: Readonly<Record<string, string>>; readonly cell: C }> = []
  private readonly byKey = new Map<string, C>()

  constructor(
    readonly labelNames: ReadonlyArray<string>,
    private readonly create: (values: ReadonlyArray<string>) => C
  ) {}

  cell(...values: ReadonlyArray<string>): C {
    const key = values.join("\u0000")
    const found = this.byKey.get(key)
    if (found !== undefined) return found
    const overflow = this.labelNames.map(() => OTHER)
    if (this.byKey.size >= MAX_SERIES && key !== overflow.join("\u0000")) return this.cell(...overflow)
    const cell = this.create(values)
    const labels: Record<string, string> = {}
    this.labelNames.forEach((name, i) => (labels[name] = values[i]!))
    this.byKey.set(key, cell)
    this.series.push({ labels, cell })
    return cell
  }
}

const newCell = (): Cell => ({ value: 0 })

const observe = (cell: HistogramCell, bounds: ReadonlyArray<number>, value: number) => {
  let i = 0
  while (i < bounds.length && value > bounds[i]!) i++
  cell.buckets[i]!++
  cell.sum += value
  cell.count++
}

/**
 * A histogram over cells, in prom-client's exposition (`_bucket` with `le`, cumulative, then `_sum` and `_count`).
 * The registry reads a metric through `getForPromString()` (the text) or `get()` (JSON), which is all this implements.
 */
class CellHistogram {
  readonly type = "histogram"
  readonly aggregator = "sum"
  readonly family: Family<HistogramCell>

  constructor(
    readonly name: string,
    readonly help: string,
    labelNames: ReadonlyArray<string>,
    readonly bounds: ReadonlyArray<number>
  ) {
    if (!validateMetricName(name)) throw new Error(`invalid metric name ${name}`)
    this.family = new Family(labelNames, () => ({ buckets: new Float64Array(bounds.length + 1), sum: 0, count: 0 }))
  }

  /**
   * The exposition's values, as prom-client's own histograms give them to the registry: the series' labels are shared
   * by its lines (one object, which the registry formats once), `le` is each bucket's own.
   */
  getForPromString() {
    const values: Array<{
      labels: Record<string, string | number>
      sharedLabels: Readonly<Record<string, string>>
      value: number
      metricName: string
    }> = []
    const bucket = `${this.name}_bucket`
    for (const { labels, cell } of this.family.series) {
      let cumulative = 0
      this.bounds.forEach((le, i) => {
        cumulative += cell.buckets[i]!
        values.push({ labels: { le }, sharedLabels: labels, value: cumulative, metricName: bucket })
      })
      values.push({ labels: { le: "+Inf" }, sharedLabels: labels, value: cell.count, metricName: bucket })
      values.push({ labels: {}, sharedLabels: labels, value: cell.sum, metricName: `${this.name}_sum` })
      values.push({ labels: {}, sharedLabels: labels, value: cell.count, metricName: `${this.name}_count` })
    }
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator })
  }

  /** The same values with every label on each (prom-client's `getMetricsAsJSON`). */
  async get() {
    const metric = await this.getForPromString()
    return {
      ...metric,
      values: metric.values.map(({ labels, sharedLabels, value, metricName }) => ({
        labels: { ...sharedLabels, ...labels },
        value,
        metricName
      }))
    }
  }

  reset() {
    for (const { cell } of this.family.series) {
      cell.buckets.fill(0)
      cell.sum = 0
      cell.count = 0
    }
  }
}

/** Request durations: a hot vote takes some 40 µs of CPU, a 503 up to 2 s. */
const REQUEST_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]
/** A batch's round trip, retries included. */
const FLUSH_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
/** One group commit's fdatasync. */
const FSYNC_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1]

/** Why a Redis command failed, as a label: its node gave no answer in time, was not connected, or said no. */
export type RedisErrorReason = "timeout" | "not_connected" | "error"
const REDIS_ERROR_REASONS: ReadonlyArray<RedisErrorReason> = ["timeout", "not_connected", "error"]

/** The caches that count hits and misses. */
export type CacheName = "results" | "definitions"

/** A cache's counters, bound once. */
export interface CacheRecorder {
  readonly hit: () => void
  readonly miss: () => void
}

/** One write-behind partition's (node's) flush metrics, bound once. */
export interface FlushRecorder {
  /** A batch was sent: whether the store confirmed it, how long it took with its retries, and how many there were. */
  readonly batch: (outcome: { ok: boolean; seconds: number; retries: number; votes: number }) => void
}

/** What a write-behind buffer holds for one node, read at each scrape. */
export interface BufferedRow {
  readonly node: string
  readonly votes: number
  readonly entries: number
}

export interface MetricsShape {
  /** prom-client's registry of this instance. */
  readonly registry: Registry
  /** The exposition, as `GET /metrics` answers it. */
  readonly scrape: () => Promise<{ readonly contentType: string; readonly body: string }>
  /** A request was answered: its route's name (the route table's, or `unmatched`), status and duration. */
  readonly requestObserved: (route: string, status: number, seconds: number) => void
  /** A request was refused by a rate limit. */
  readonly rateLimited: (policy: "client" | "voter") => void
  readonly voteAccepted: () => void
  /** A vote was refused, by its error's `code`. */
  readonly voteRefused: (code: string) => void
  readonly cache: (name: CacheName) => CacheRecorder
  readonly flushes: (node: string) => FlushRecorder
  /**
   * Adds a buffer to what the buffer gauges report: its capacity in entries, and what it holds per node, read at each
   * scrape. The returned function takes it away again.
   */
  readonly buffered: (maxEntries: number, read: () => Iterable<BufferedRow>) => () => void
  readonly fsyncObserved: (seconds: number) => void
  /** The node's error counters, present at 0 from now on (`rate()` then sees the first error). */
  readonly redisNode: (node: string) => void
  readonly redisError: (node: string, reason: RedisErrorReason) => void
  readonly streamOpened: () => void
  readonly streamClosed: () => void
}

/** A fresh registry with every metric of the app, and the default process and Node metrics. */
export const make = (): MetricsShape => {
  const registry = new Registry()
  // Each registry keeps an event-loop delay monitor for the life of the process: one per app instance.
  collectDefaultMetrics({ register: registry, prefix: PREFIX })

  /** A counter read from its cells at each scrape. */
  const counter = (name: string, help: string, labelNames: ReadonlyArray<string> = []) => {
    const family = new Family(labelNames, newCell)
    new Counter({
      name: `${PREFIX}${name}`,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset()
        for (const { labels, cell } of family.series) this.inc(labels, cell.value)
      }
    })
    return family
  }
  const histogram = (name: string, help: string, labelNames: ReadonlyArray<string>, bounds: ReadonlyArray<number>) => {
    const metric = new CellHistogram(`${PREFIX}${name}`, help, labelNames, bounds)
    registry.registerMetric(metric as unknown as Histogram)
    return metric
  }

  // One cell per route and status, shared by the request counter and the duration histogram: one update for both.
  const requestDurations = histogram(
    "http_request_duration_seconds",
    "Time from routing a request to sending its answer (for a live stream, its first bytes), by route and status.",
    ["route", "status"],
    REQUEST_BUCKETS
  )
  const requestCells = new Family(["route", "status"], (values) => ({
    count: newCell(),
    duration: requestDurations.family.cell(...values)
  }))
  new Counter({
    name: `${PREFIX}http_requests_total`,
    help: "Requests answered, by route (the route table's name, or unmatched) and status code.",
    labelNames: ["route", "status"],
    registers: [registry],
    collect() {
      this.reset()
      for (const { labels, cell } of requestCells.series) this.inc(labels, cell.count.value)
    }
  })
  // The cells by route and status, found with two map lookups and no string built (at most MAX_SERIES of them kept).
  const requestsByRoute = new Map<string, Map<number, { count: Cell; duration: HistogramCell }>>()
  let requestSeries = 0
  const requestObserved = (route: string, status: number, seconds: number) => {
    let cells = requestsByRoute.get(route)?.get(status)
    if (cells === undefined) {
      cells = requestCells.cell(route, String(status))
      if (requestSeries < MAX_SERIES) {
        requestSeries++
        let byStatus = requestsByRoute.get(route)
        if (byStatus === undefined) requestsByRoute.set(route, (byStatus = new Map()))
        byStatus.set(status, cells)
      }
    }
    cells.count.value++
    observe(cells.duration, REQUEST_BUCKETS, seconds)
  }

  const rateLimitedCells = counter(
    "rate_limited_requests_total",
    "Requests refused with 429 by a rate limit, by policy (client address or voter id).",
    ["policy"]
  )
  const rateLimitedBy = { client: rateLimitedCells.cell("client"), voter: rateLimitedCells.cell("voter") }

  const accepted = counter("votes_accepted_total", "Votes answered 200.").cell()
  const refusedCells = counter("votes_refused_total", "Votes refused, by reason (the error code answered).", ["reason"])
  const refusedBy = new Map<string, Cell>()
  const voteRefused = (code: string) => {
    let cell = refusedBy.get(code)
    if (cell === undefined) {
      cell = refusedCells.cell(code)
      if (refusedBy.size < MAX_SERIES) refusedBy.set(code, cell)
    }
    cell.value++
  }

  const hits = counter("cache_hits_total", "Reads answered from a cache, by cache (results, definitions).", ["cache"])
  const misses = counter("cache_misses_total", "Reads a cache passed on to the store, by cache.", ["cache"])
  const cache = (name: CacheName): CacheRecorder => {
    const hit = hits.cell(name)
    const miss = misses.cell(name)
    return { hit: () => void hit.value++, miss: () => void miss.value++ }
  }

  const batches = counter("flush_batches_total", "Write-behind batches the store confirmed, by node.", ["node"])
  const failures = counter(
    "flush_failures_total",
    "Write-behind batches that failed after their retries (kept for the next round), by node.",
    ["node"]
  )
  const retries = counter("flush_retries_total", "Retries of write-behind batches within a flush round, by node.", [
    "node"
  ])
  const flushedVotes = counter("flushed_votes_total", "Votes written to the store by confirmed batches, by node.", [
    "node"
  ])
  const flushDurations = histogram(
    "flush_duration_seconds",
    "Time to send one write-behind batch, its retries included, whatever the outcome, by node.",
    ["node"],
    FLUSH_BUCKETS
  )
  const flushes = (node: string): FlushRecorder => {
    const ok = batches.cell(node)
    const failed = failures.cell(node)
    const retried = retries.cell(node)
    const votes = flushedVotes.cell(node)
    const duration = flushDurations.family.cell(node)
    return {
      batch: (outcome) => {
        if (outcome.ok) {
          ok.value++
          votes.value += outcome.votes
        } else failed.value++
        retried.value += outcome.retries
        observe(duration, FLUSH_BUCKETS, outcome.seconds)
      }
    }
  }

  const buffers = new Set<{ readonly maxEntries: number; readonly read: () => Iterable<BufferedRow> }>()
  const bufferGauge = (name: string, help: string, read: (row: BufferedRow) => number) =>
    new Gauge({
      name: `${PREFIX}${name}`,
      help,
      labelNames: ["node"],
      registers: [registry],
      collect() {
        const byNode = new Map<string, number>()
        for (const buffer of buffers) {
          for (const row of buffer.read()) byNode.set(row.node, (byNode.get(row.node) ?? 0) + read(row))
        }
        this.reset()
        for (const [node, value] of byNode) this.set({ node }, value)
      }
    })
  bufferGauge(
    "buffered_votes",
    "Accepted votes the write-behind buffer holds that the store has not confirmed, by node.",
    (row) => row.votes
  )
  bufferGauge(
    "buffered_entries",
    "Distinct (poll, option) entries the write-behind buffer holds, by node (BUFFER_MAX_ENTRIES caps their sum).",
    (row) => row.entries
  )
  new Gauge({
    name: `${PREFIX}buffer_max_entries`,
    help: "Entries the write-behind buffer may hold (BUFFER_MAX_ENTRIES; half of it triggers an early flush); 0: none.",
    registers: [registry],
    collect() {
      let total = 0
      for (const buffer of buffers) total += buffer.maxEntries
      this.set(total)
    }
  })
  const buffered = (maxEntries: number, read: () => Iterable<BufferedRow>) => {
    const buffer = { maxEntries, read }
    buffers.add(buffer)
    return () => void buffers.delete(buffer)
  }

  const fsyncs = histogram(
    "journal_fsync_duration_seconds",
    "Time of one journal group commit's fdatasync.",
    [],
    FSYNC_BUCKETS
  ).family.cell()

  const redisErrors = counter(
    "redis_command_errors_total",
    "Redis commands that failed, by node and reason (timeout, not_connected, error).",
    ["node", "reason"]
  )
  const redisNode = (node: string) => {
    for (const reason of REDIS_ERROR_REASONS) redisErrors.cell(node, reason)
  }

  const streams = newCell()
  new Gauge({
    name: `${PREFIX}live_streams_open`,
    help: "Live result streams (Server-Sent Events) open now.",
    registers: [registry],
    collect() {
      this.set(streams.value)
    }
  })

  return {
    registry,
    scrape: async () => ({ contentType: registry.contentType, body: await registry.metrics() }),
    requestObserved,
    rateLimited: (policy) => void rateLimitedBy[policy].value++,
    voteAccepted: () => void accepted.value++,
    voteRefused,
    cache,
    flushes,
    buffered,
    fsyncObserved: (seconds) => observe(fsyncs, FSYNC_BUCKETS, seconds),
    redisNode,
    redisError: (node, reason) => void redisErrors.cell(node, reason).value++,
    streamOpened: () => void streams.value++,
    streamClosed: () => void streams.value--
  }
}

/**
 * The metrics of the app instance. A layer built without one provided (a test's store, a script) records into a
 * registry of its own process, made on first use: nothing needs to provide Metrics for the code to run.
 */
export class Metrics extends Context.Reference<Metrics>()("livepoll/Metrics", { defaultValue: make }) {}

/** A fresh registry: the app provides it once, under both the stores and the HTTP side. */
export const layer: Layer.Layer<Metrics> = Layer.sync(Metrics, make)

/** The metrics a context holds, or the process's own when it holds none. */
export const of = <R>(context: Context.Context<R>): MetricsShape => Context.get(context, Metrics)
