import { readFileSync } from "node:fs"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type Exposition, metricOf, parseExposition } from "./support/exposition.js"
import { type InProcessApp, startInProcess } from "./support/inProcess.js"

/**
 * docs/grafana-dashboard.json, held to the metrics the app exports: Grafana itself is not run here, so what can go
 * wrong with the file is checked instead (a query naming a metric that does not exist, a gauge under `rate()`, a
 * metric no panel shows, a panel without its data source).
 */
const FILE = join(import.meta.dirname, "..", "docs", "grafana-dashboard.json")

interface Target {
  readonly refId: string
  readonly expr: string
  readonly datasource?: { readonly uid?: string }
}
interface Panel {
  readonly id: number
  readonly type: string
  readonly title: string
  readonly gridPos: { readonly x: number; readonly y: number; readonly w: number; readonly h: number }
  readonly datasource?: { readonly type?: string; readonly uid?: string }
  readonly targets?: ReadonlyArray<Target>
}
interface Variable {
  readonly name: string
  readonly type: string
  readonly query: string | { readonly query: string }
}

const dashboard = JSON.parse(readFileSync(FILE, "utf8")) as {
  readonly title: string
  readonly uid: string
  readonly schemaVersion: number
  readonly panels: ReadonlyArray<Panel>
  readonly templating: { readonly list: ReadonlyArray<Variable> }
}
const graphs = dashboard.panels.filter((p) => p.type !== "row")
const queries = graphs.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, expr: t.expr })))
const variableQueries = dashboard.templating.list.flatMap((v) =>
  v.type === "query" ? [{ panel: `$${v.name}`, expr: typeof v.query === "string" ? v.query : v.query.query }] : []
)

/** PromQL's words that are not metric names. */
const KEYWORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"])
const KEYWORDS_WITH = new Set(["bool", "offset", "inf", "nan"])

/**
 * The metric names a PromQL expression selects: identifiers outside label matchers, ranges and strings, that are
 * neither a function or aggregation (followed by `(`), nor a keyword, nor a grouping's label list.
 */
const metricNames = (expr: string): Array<string> => {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, "")
    .replace(/\[[^\]]*\]/g, "")
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ")
  return [...bare.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)]
    .filter((m) => !/^\s*\(/.test(bare.slice(m.index! + m[0].length)))
    .map((m) => m[0])
    .filter((word) => !KEYWORDS.has(word) && !KEYWORDS_WITH.has(word.toLowerCase()))
    .filter((word, i, all) => all.indexOf(word) === i)
}

/** The selectors a `rate()` or `increase()` is taken of. */
const ratedNames = (expr: string): Array<string> =>
  [...expr.matchAll(/\b(?:rate|irate|increase)\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)/g)].map((m) => m[1]!)

const balanced = (expr: string) => {
  const stack: Array<string> = []
  const pairs: Record<string, string> = { ")": "(", "]": "[", "}": "{" }
  for (const c of expr.replace(/"(?:[^"\\]|\\.)*"/g, '""')) {
    if ("([{".includes(c)) stack.push(c)
    else if (c in pairs && stack.pop() !== pairs[c]) return false
  }
  return stack.length === 0
}

describe("the Grafana dashboard: its shape", () => {
  it("reads the names it checks", () => {
    // A guard on the extractor: were it to find nothing, every check of names below would pass.
    expect(metricNames('sum by (le, route) (rate(livepoll_a_bucket{instance=~"$i"}[$__rate_interval])) / b')).toEqual([
      "livepoll_a_bucket",
      "b"
    ])
    expect(metricNames("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))")).toEqual(["x_bucket"])
    expect(metricNames("label_values(livepoll_http_requests_total, instance)")).toEqual([
      "livepoll_http_requests_total",
      "instance"
    ])
    expect(queries.length).toBeGreaterThan(15)
  })

  it("is a dashboard: a title, a uid, a schema version, a Prometheus data-source variable every query uses", () => {
    expect(dashboard.title).toBe("livepoll")
    expect(dashboard.uid).toMatch(/^[a-zA-Z0-9_-]{1,40}$/)
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(36)
    const source = dashboard.templating.list.find((v) => v.type === "datasource")
    expect(source).toMatchObject({ name: "datasource", query: "prometheus" })
    for (const panel of graphs) {
      expect({ title: panel.title, datasource: panel.datasource }).toEqual({
        title: expect.any(String),
        datasource: { type: "prometheus", uid: "${datasource}" }
      })
      expect(panel.targets?.length ?? 0).toBeGreaterThan(0)
      for (const target of panel.targets ?? []) {
        expect(target.datasource?.uid ?? "${datasource}").toBe("${datasource}")
        expect(target.expr.trim().length).toBeGreaterThan(0)
        expect(balanced(target.expr)).toBe(true)
      }
      const refIds = (panel.targets ?? []).map((t) => t.refId)
      expect(new Set(refIds).size).toBe(refIds.length)
    }
  })

  it("lays its panels out on Grafana's 24-column grid, each with an id of its own", () => {
    const ids = dashboard.panels.map((p) => p.id)
    expect(new Set(ids).size).toBe(ids.length)
    for (const { gridPos } of dashboard.panels) {
      expect(gridPos.w).toBeGreaterThan(0)
      expect(gridPos.h).toBeGreaterThan(0)
      expect(gridPos.x + gridPos.w).toBeLessThanOrEqual(24)
    }
  })
})

describe("the Grafana dashboard: against the app's metrics", () => {
  let app: InProcessApp
  let exported: Exposition
  beforeAll(async () => {
    app = await startInProcess({ POLL_STAGE: "memory" })
    for (let i = 0; i < 20; i++) {
      await fetch(`${app.baseUrl}/vote/d-${i % 3}`, { method: "POST", body: JSON.stringify({ option_id: "A" }) })
      await fetch(`${app.baseUrl}/results/d-${i % 3}`)
    }
    await fetch(`${app.baseUrl}/vote/d-0`, { method: "POST", body: "not json" })
    exported = parseExposition(await (await fetch(`${app.baseUrl}/metrics`)).text())
  })
  afterAll(async () => {
    await app?.close()
  })

  const used = () =>
    [...queries, ...variableQueries].flatMap(({ panel, expr }) =>
      metricNames(expr)
        .filter((name) => name !== "instance")
        .map((name) => ({ panel, name }))
    )

  it("names only metrics the app exports", () => {
    expect(exported.types.size).toBeGreaterThan(30)
    const unknown = used().filter(({ name }) => metricOf(exported, name) === undefined)
    expect(unknown).toEqual([])
  })

  it("takes rate() of counters and histogram buckets only, never of a gauge", () => {
    const wrong = queries.flatMap(({ panel, expr }) =>
      ratedNames(expr)
        .filter((name) => {
          const metric = metricOf(exported, name)
          const type = metric === undefined ? undefined : exported.types.get(metric)
          return !(type === "counter" || (type === "histogram" && name.endsWith("_bucket")))
        })
        .map((name) => ({ panel, name }))
    )
    expect(wrong).toEqual([])
  })

  it("shows every metric of the app's own, and the event-loop lag", () => {
    const shown = new Set(used().map(({ name }) => metricOf(exported, name)))
    const own = [...exported.types.keys()].filter((name) => !/^livepoll_(process|nodejs)_/.test(name))
    expect(own.length).toBeGreaterThan(15)
    expect(own.filter((name) => !shown.has(name))).toEqual([])
    expect(shown.has("livepoll_nodejs_eventloop_lag_p99_seconds")).toBe(true)
  })
})
