/**
 * Prometheus' text exposition format, read back: what `GET /metrics` answers, as the tests and the bench look at it.
 * Enough of the format for prom-client's output: `# HELP` and `# TYPE` lines, and samples with or without labels
 * (escaped `\\`, `\"` and `\n` in values), no timestamps.
 */

export interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

export interface Exposition {
  /** Every metric the text declares (with a `# TYPE` line), samples or not, and its type. */
  readonly types: ReadonlyMap<string, string>
  readonly help: ReadonlyMap<string, string>
  readonly samples: ReadonlyArray<Sample>
}

/** A sample's value; prom-client writes NaN as `Nan`, which Prometheus reads (its parser ignores the case). */
const number = (text: string) =>
  text === "+Inf"
    ? Infinity
    : text === "-Inf"
      ? -Infinity
      : /^nan$/i.test(text)
        ? NaN
        : text === ""
          ? undefined
          : Number(text)

const parseLabels = (text: string, line: string): Record<string, string> => {
  const labels: Record<string, string> = {}
  let i = 0
  while (i < text.length) {
    const eq = text.indexOf("=", i)
    if (eq === -1 || text[eq + 1] !== '"') throw new Error(`malformed labels in: ${line}`)
    const name = text.slice(i, eq).trim()
    let value = ""
    let j = eq + 2
    for (; j < text.length && text[j] !== '"'; j++) {
      if (text[j] === "\\") {
        j++
        value += text[j] === "n" ? "\n" : text[j]
      } else value += text[j]
    }
    if (j >= text.length) throw new Error(`unterminated label value in: ${line}`)
    labels[name] = value
    i = j + 1
    if (text[i] === ",") i++
  }
  return labels
}

export const parseExposition = (text: string): Exposition => {
  const types = new Map<string, string>()
  const help = new Map<string, string>()
  const samples: Array<Sample> = []
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue
    const meta = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line)
    if (meta !== null) {
      ;(meta[1] === "TYPE" ? types : help).set(meta[2]!, meta[3]!)
      continue
    }
    if (line.startsWith("#")) continue
    const open = line.indexOf("{")
    const close = line.lastIndexOf("}")
    const name = open === -1 ? line.slice(0, line.indexOf(" ")) : line.slice(0, open)
    const labels = open === -1 ? {} : parseLabels(line.slice(open + 1, close), line)
    const rest = (open === -1 ? line.slice(name.length) : line.slice(close + 1)).trim().split(/\s+/)
    const value = number(rest[0] ?? "")
    if (name === "" || value === undefined || (Number.isNaN(value) && !/^nan$/i.test(rest[0]!))) {
      throw new Error(`malformed sample: ${line}`)
    }
    samples.push({ name, labels, value })
  }
  return { types, help, samples }
}

const matches = (sample: Sample, name: string, labels: Readonly<Record<string, string>>) =>
  sample.name === name && Object.entries(labels).every(([k, v]) => sample.labels[k] === v)

/** The sum of the samples named `name` whose labels include `labels`; undefined when there is none. */
export const sumOf = (
  e: Exposition,
  name: string,
  labels: Readonly<Record<string, string>> = {}
): number | undefined => {
  const found = e.samples.filter((s) => matches(s, name, labels))
  return found.length === 0 ? undefined : found.reduce((sum, s) => sum + s.value, 0)
}

/** The metric a sample belongs to: a histogram's `_bucket`, `_sum` and `_count` belong to the histogram. */
export const metricOf = (e: Exposition, sampleName: string): string | undefined => {
  if (e.types.has(sampleName)) return sampleName
  const base = sampleName.replace(/_(bucket|sum|count)$/, "")
  return e.types.get(base) === "histogram" || e.types.get(base) === "summary" ? base : undefined
}
