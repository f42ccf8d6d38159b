import { parse, View } from "vega"
import { compile, type TopLevelSpec } from "vega-lite"

export interface Bar {
  readonly stage: string
  readonly workload: string
  /** Requests per second as a multiple of the bare node:http server's, same workload, same run. */
  readonly ratio: number
}

/** The throughput target of the benchmark issue, drawn as a line. */
export const TARGET_RATIO = 0.7

/** What both charts are drawn for: the stages and workloads in their order, and the lines under the title. */
export interface ChartOptions {
  readonly stages: ReadonlyArray<string>
  readonly workloads: ReadonlyArray<string>
  readonly subtitle: ReadonlyArray<string>
}

/** A chart's schema and its title, flush left over the subtitle's lines. */
const heading = (text: string, options: ChartOptions) => ({
  $schema: "https://vega.github.io/schema/vega-lite/v6.json",
  title: { text, subtitle: [...options.subtitle], anchor: "start" as const }
})

/** A grouped bar chart of each stage's throughput ratio per workload, as an SVG document. */
export const render = async (bars: ReadonlyArray<Bar>, options: ChartOptions): Promise<string> => {
  const x = {
    field: "stage",
    type: "nominal",
    sort: [...options.stages],
    title: "stage",
    axis: { labelAngle: 0 }
  } as const
  const spec: TopLevelSpec = {
    ...heading("livepoll throughput relative to a bare node:http server (same run)", options),
    width: Math.max(480, options.stages.length * options.workloads.length * 34),
    height: 300,
    data: { values: bars.map((b) => ({ ...b, label: b.ratio.toFixed(2) })) },
    layer: [
      {
        encoding: {
          x,
          xOffset: { field: "workload", type: "nominal", sort: [...options.workloads] },
          y: { field: "ratio", type: "quantitative", title: "requests/s ÷ bare node:http requests/s" },
          color: { field: "workload", type: "nominal", sort: [...options.workloads], title: "workload" }
        },
        layer: [
          { mark: { type: "bar" } },
          {
            mark: { type: "text", baseline: "bottom", dy: -2, fontSize: 9 },
            encoding: { text: { field: "label", type: "nominal" }, color: { value: "#333" } }
          }
        ]
      },
      // One datum of their own, or the line and its label are drawn once per bar.
      {
        data: { values: [{}] },
        mark: { type: "rule", strokeDash: [5, 4], color: "#b00" },
        encoding: { y: { datum: TARGET_RATIO } }
      },
      {
        data: { values: [{}] },
        mark: { type: "text", align: "right", baseline: "bottom", dy: -2, color: "#b00", fontSize: 10 },
        encoding: { y: { datum: TARGET_RATIO }, x: { value: "width" }, text: { value: `target ${TARGET_RATIO}×` } }
      }
    ],
    config: { font: "Helvetica, Arial, sans-serif", view: { stroke: null } }
  }
  const view = new View(parse(compile(spec).spec), { renderer: "none" })
  try {
    return await view.toSVG()
  } finally {
    view.finalize()
  }
}

/** One reading of the app's own metrics during a measurement (bench/scrape.ts), as a point of the timeline. */
export interface Point {
  readonly stage: string
  readonly workload: string
  /** Which line: `buffered votes`, `flush batches` (so far) or `results cache hit ratio`. */
  readonly metric: string
  /** Seconds into the measurement. */
  readonly at: number
  readonly value: number
}

/** The metrics charted over time, in the order of their rows. */
export const TIMELINE_METRICS = ["buffered votes", "flush batches", "results cache hit ratio"] as const

/**
 * What the app's `/metrics` said during each measurement: one row of panels per metric, one column per workload, a
 * line per stage (a stage without a buffer or a results cache has no line in that row), as an SVG document.
 */
export const renderTimeline = async (points: ReadonlyArray<Point>, options: ChartOptions): Promise<string> => {
  const spec: TopLevelSpec = {
    ...heading("livepoll during each measurement, as its GET /metrics reported it", options),
    // A point without a value for every panel: a facet lays out only the cells its data has, in order, so a workload
    // without one of the lines (no reads, no cache) would shift the others into the wrong cells.
    data: {
      values: [
        ...points,
        ...TIMELINE_METRICS.flatMap((metric) =>
          options.workloads.map((workload) => ({ stage: points[0]?.stage, workload, metric, at: null, value: null }))
        )
      ]
    },
    facet: {
      row: { field: "metric", type: "nominal", sort: [...TIMELINE_METRICS], title: null },
      column: { field: "workload", type: "nominal", sort: [...options.workloads], title: "workload" }
    },
    spec: {
      width: 260,
      height: 140,
      mark: { type: "line", point: { size: 12 }, interpolate: "step-after" },
      encoding: {
        x: { field: "at", type: "quantitative", title: "seconds into the measurement" },
        y: { field: "value", type: "quantitative", title: null, axis: { format: ",~r" } },
        color: { field: "stage", type: "nominal", sort: [...options.stages], title: "stage" }
      }
    },
    resolve: { scale: { y: "independent" } },
    config: { font: "Helvetica, Arial, sans-serif", view: { stroke: "#ddd" } }
  }
  const view = new View(parse(compile(spec).spec), { renderer: "none" })
  try {
    return await view.toSVG()
  } finally {
    view.finalize()
  }
}
