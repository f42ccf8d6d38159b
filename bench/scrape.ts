/**
 * The app's own view of a measurement: its `GET /metrics`, read every SCRAPE_MS while the load runs, kept as a few
 * numbers per reading (what the buffer holds, the flushes so far, the caches' hits and misses). The readings go into
 * the results JSON beside each row, and chart.ts draws them over time (`latest-metrics.svg`).
 *
 * A reading is one GET on a connection of its own, outside wrk's load and not counted in it; the app's CPU time does
 * include answering it (some milliseconds each, a fraction of a percent of the measured window).
 */
import { type Exposition, parseExposition, sumOf } from "../test/support/exposition.js"
import type { Point } from "./chart.js"

/** How often the app's metrics are read during a measurement. */
export const SCRAPE_MS = 500

export interface Reading {
  /** Seconds since the readings began. */
  readonly at: number
  /** Accepted votes in the write-behind buffer, every node; null where the stage has none. */
  readonly bufferedVotes: number | null
  /** Distinct (poll, option) entries in it. */
  readonly bufferedEntries: number | null
  /** Batches the store confirmed since the readings began, every node. */
  readonly flushBatches: number
  readonly flushFailures: number
  /** Seconds the batches since the readings began took to send, retries included, every node. */
  readonly flushSeconds: number
  /** Hits and misses of the results cache since the readings began; both 0 where the stage has no results cache. */
  readonly cacheHits: number
  readonly cacheMisses: number
  /** Hits of all lookups since the previous reading; null when there were none. */
  readonly cacheHitRatio: number | null
  /** The definitions cache's, likewise (a defined poll's votes read it). */
  readonly definitionsHitRatio: number | null
  /** The event loop's p99 delay since the previous reading, in ms. */
  readonly eventLoopP99Ms: number | null
}

/** One scrape as the app reports it: the counters since the app started, not since the readings began. */
interface Totals extends Pick<
  Reading,
  "bufferedVotes" | "bufferedEntries" | "flushBatches" | "flushFailures" | "flushSeconds" | "cacheHits" | "cacheMisses"
> {
  readonly definitionsHits: number
  readonly definitionsMisses: number
  readonly eventLoopP99: number | null
}

/** A stage with a write-behind buffer says how many entries it may hold; the others say 0. */
const buffered = (e: Exposition, name: string) =>
  (sumOf(e, "livepoll_buffer_max_entries") ?? 0) > 0 ? (sumOf(e, name) ?? 0) : null

export const totalsOf = (e: Exposition): Totals => ({
  bufferedVotes: buffered(e, "livepoll_buffered_votes"),
  bufferedEntries: buffered(e, "livepoll_buffered_entries"),
  flushBatches: sumOf(e, "livepoll_flush_batches_total") ?? 0,
  flushFailures: sumOf(e, "livepoll_flush_failures_total") ?? 0,
  flushSeconds: sumOf(e, "livepoll_flush_duration_seconds_sum") ?? 0,
  cacheHits: sumOf(e, "livepoll_cache_hits_total", { cache: "results" }) ?? 0,
  cacheMisses: sumOf(e, "livepoll_cache_misses_total", { cache: "results" }) ?? 0,
  definitionsHits: sumOf(e, "livepoll_cache_hits_total", { cache: "definitions" }) ?? 0,
  definitionsMisses: sumOf(e, "livepoll_cache_misses_total", { cache: "definitions" }) ?? 0,
  eventLoopP99: sumOf(e, "livepoll_nodejs_eventloop_lag_p99_seconds") ?? null
})

const ratio = (hits: number, misses: number) => (hits + misses > 0 ? hits / (hits + misses) : null)

/** A reading from the totals of one scrape, the first one's (the baseline) and the previous one's. */
export const readingOf = (at: number, now: Totals, first: Totals, previous: Totals): Reading => ({
  at: Math.round(at * 1000) / 1000,
  bufferedVotes: now.bufferedVotes,
  bufferedEntries: now.bufferedEntries,
  flushBatches: now.flushBatches - first.flushBatches,
  flushFailures: now.flushFailures - first.flushFailures,
  flushSeconds: Math.round((now.flushSeconds - first.flushSeconds) * 1e6) / 1e6,
  cacheHits: now.cacheHits - first.cacheHits,
  cacheMisses: now.cacheMisses - first.cacheMisses,
  cacheHitRatio: ratio(now.cacheHits - previous.cacheHits, now.cacheMisses - previous.cacheMisses),
  definitionsHitRatio: ratio(
    now.definitionsHits - previous.definitionsHits,
    now.definitionsMisses - previous.definitionsMisses
  ),
  eventLoopP99Ms:
    now.eventLoopP99 === null || !Number.isFinite(now.eventLoopP99) ? null : Math.round(now.eventLoopP99 * 1e6) / 1000
})

const read = async (url: string): Promise<Totals | undefined> => {
  try {
    const response = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(2000) })
    const text = await response.text()
    return response.status === 200 ? totalsOf(parseExposition(text)) : undefined
  } catch {
    return undefined
  }
}

/**
 * Reads `url`/metrics at once and then every `intervalMs` until `stop`, which takes one last reading and resolves
 * with them all. A reading that fails (or is still under way when the next is due) is skipped; `failed` counts them.
 */
export const watch = (url: string, intervalMs = SCRAPE_MS) => {
  const readings: Array<Reading> = []
  const started = performance.now()
  let first: Totals | undefined
  let previous: Totals | undefined
  let failed = 0
  let pending: Promise<void> | undefined
  const take = () => {
    if (pending !== undefined) return void failed++
    const at = (performance.now() - started) / 1000
    pending = read(url).then((totals) => {
      pending = undefined
      if (totals === undefined) return void failed++
      first ??= totals
      readings.push(readingOf(at, totals, first, previous ?? totals))
      previous = totals
    })
  }
  take()
  const timer = setInterval(take, intervalMs)
  return {
    stop: async (): Promise<{ readonly readings: ReadonlyArray<Reading>; readonly failed: number }> => {
      clearInterval(timer)
      await pending
      take()
      await pending
      return { readings, failed }
    }
  }
}

/** The readings of one measurement, and how many were skipped. */
export interface Scraped {
  readonly intervalMs: number
  readonly readings: ReadonlyArray<Reading>
  readonly failed: number
}

/** One measurement's readings as points of the timeline chart: only the lines its stage has. */
export const pointsOf = (stage: string, workload: string, readings: ReadonlyArray<Reading>): Array<Point> =>
  readings.flatMap((r) => [
    ...(r.bufferedVotes === null
      ? []
      : [
          { stage, workload, metric: "buffered votes", at: r.at, value: r.bufferedVotes },
          { stage, workload, metric: "flush batches", at: r.at, value: r.flushBatches }
        ]),
    ...(r.cacheHitRatio === null
      ? []
      : [{ stage, workload, metric: "results cache hit ratio", at: r.at, value: r.cacheHitRatio }])
  ])

/** What one measurement's readings add up to, for the table: peaks, totals and overall ratios. */
export const summaryOf = (scraped: Scraped) => {
  const { readings } = scraped
  const last = readings.at(-1)
  const buffered = readings.flatMap((r) => (r.bufferedVotes === null ? [] : [r.bufferedVotes]))
  const lags = readings.flatMap((r) => (r.eventLoopP99Ms === null ? [] : [r.eventLoopP99Ms]))
  return {
    readings: readings.length,
    peakBufferedVotes: buffered.length === 0 ? null : Math.max(...buffered),
    flushBatches: last === undefined || buffered.length === 0 ? null : last.flushBatches,
    flushFailures: last === undefined || buffered.length === 0 ? null : last.flushFailures,
    // Every batch, confirmed or failed, is timed once.
    meanFlushMs:
      last === undefined || last.flushBatches + last.flushFailures === 0
        ? null
        : (last.flushSeconds * 1000) / (last.flushBatches + last.flushFailures),
    cacheHitRatio: last === undefined ? null : ratio(last.cacheHits, last.cacheMisses),
    maxEventLoopP99Ms: lags.length === 0 ? null : Math.max(...lags)
  }
}
