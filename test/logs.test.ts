import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type App, killAllApps, startApp } from "./support/app.js"
import { eventually } from "./support/wait.js"

/** The app's log lines: their format, and which requests get an access line. */

let plain: App
let sampled: App
let logfmt: App

beforeAll(async () => {
  ;[plain, sampled, logfmt] = await Promise.all([
    startApp({ env: { POLL_STAGE: "memory" } }),
    startApp({ env: { POLL_STAGE: "memory", ACCESS_LOG_SAMPLE: "1" } }),
    startApp({ env: { POLL_STAGE: "memory", LOG_FORMAT: "logfmt" } })
  ])
}, 60_000)

afterAll(() => killAllApps())

const parsed = (app: App): Array<any> =>
  app.lines.flatMap((line) => {
    try {
      return [JSON.parse(line)]
    } catch {
      return []
    }
  })

const accessLines = (app: App) => parsed(app).filter((l) => l.message === "request")

describe("log lines", () => {
  it("are one JSON object each by default, the start-up line with every setting among them", () => {
    const lines = plain.lines.filter((l) => l.trim() !== "")
    expect(lines.length).toBeGreaterThan(0)
    for (const line of lines) expect(() => JSON.parse(line), line).not.toThrow()
    const start = parsed(plain).find((l) => String(l.message).startsWith("livepoll starting:"))
    expect(start).toMatchObject({ logLevel: "INFO", message: expect.stringContaining("log_format=json") })
  })

  it("are logfmt when LOG_FORMAT says so", () => {
    expect(logfmt.output()).toMatch(/level=INFO .*message="livepoll starting: .*log_format=logfmt/)
    expect(parsed(logfmt)).toEqual([])
  })
})

describe("access lines", () => {
  it("are off for votes and reads by default, and on for defining a poll", async () => {
    expect((await plain.vote("quiet", "A")).status).toBe(200)
    expect((await plain.results("quiet")).status).toBe(200)
    const created = await plain.request(
      "POST",
      "/api/v1/polls",
      JSON.stringify({
        question: "Lunch?",
        options: [
          { id: "a", label: "A" },
          { id: "b", label: "B" }
        ]
      })
    )
    expect(created.status).toBe(201)
    const line = await eventually(async () => accessLines(plain).find((l) => l.annotations.route === "CreatePoll"))
    expect(line.annotations).toMatchObject({
      method: "POST",
      path: "/api/v1/polls",
      status: 201,
      request_id: created.headers.get("x-request-id"),
      client: "127.0.0.1"
    })
    expect(accessLines(plain).filter((l) => ["Vote", "Results"].includes(l.annotations.route))).toEqual([])
  })

  it("cover every request when sampled at 1, each with the id its answer carried", async () => {
    const answers = [
      await sampled.vote("loud", "A"),
      await sampled.results("loud"),
      await sampled.request("GET", "/nope")
    ]
    const ids = answers.map((a) => a.headers.get("x-request-id"))
    const lines = await eventually(async () => {
      const found = ids.map((id) => accessLines(sampled).find((l) => l.annotations.request_id === id))
      return found.every((l) => l !== undefined) ? found : undefined
    })
    expect(lines.map((l) => [l.annotations.route, l.annotations.status])).toEqual([
      ["Vote", 200],
      ["Results", 200],
      ["Reject", 404]
    ])
    for (const l of lines) expect(l.annotations.duration_ms).toBeGreaterThanOrEqual(0)
  })
})
