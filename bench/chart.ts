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

/** A grouped bar chart of each stage's throughput ratio per workload, as an SVG document. */
export const render = async (
  bars: ReadonlyArray<Bar>,
  options: {
    readonly stages: ReadonlyArray<string>
    readonly workloads: ReadonlyArray<string>
    readonly subtitle: ReadonlyArray<string>
  }
): Promise<string> => {
  const x = {
    field: "stage",
    type: "nominal",
    sort: [...options.stages],
    title: "stage",
    axis: { labelAngle: 0 }
  } as const
  const spec: TopLevelSpec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: {
      text: "livepoll throughput relative to a bare node:http server (same run)",
      subtitle: [...options.subtitle],
      anchor: "start"
    },
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
