import { type ClientRequest, request as httpRequest } from "node:http"

export interface ResultsEvent {
  /** When it arrived (Date.now()). */
  readonly at: number
  readonly data: any
}

export interface Stream {
  readonly status: number
  readonly contentType: string | undefined
  readonly events: Array<ResultsEvent>
  /** Resolves with the first event at index `from` or later that satisfies `test`. */
  readonly waitFor: (
    test: (data: any) => boolean,
    options?: { from?: number; timeoutMs?: number; what?: string }
  ) => Promise<ResultsEvent>
  readonly close: () => void
}

/**
 * Opens `GET /api/v1/polls/{id}/stream` on `port` over its own connection and parses `event: results` frames as they
 * arrive.
 */
export const openStream = (port: number, pollId: string): Promise<Stream> =>
  new Promise((resolve, reject) => {
    const events: Array<ResultsEvent> = []
    const waiters = new Set<() => void>()
    let req: ClientRequest
    let ended = false
    req = httpRequest({ host: "127.0.0.1", port, path: `/api/v1/polls/${pollId}/stream`, agent: false }, (res) => {
      let buffer = ""
      res.setEncoding("utf8")
      res.on("data", (chunk: string) => {
        buffer += chunk
        for (let end = buffer.indexOf("\n\n"); end !== -1; end = buffer.indexOf("\n\n")) {
          const frame = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          let event = "message"
          const data: Array<string> = []
          for (const line of frame.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim()
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""))
          }
          if (event === "results" && data.length > 0) {
            events.push({ at: Date.now(), data: JSON.parse(data.join("\n")) })
            waiters.forEach((w) => w())
          }
        }
      })
      res.on("error", () => {})
      res.on("close", () => {
        ended = true
        waiters.forEach((w) => w())
      })
      resolve({
        status: res.statusCode ?? 0,
        contentType: res.headers["content-type"],
        events,
        waitFor: (test, { from = 0, timeoutMs = 3000, what = "an event" } = {}) =>
          new Promise((found, fail) => {
            const check = () => {
              const hit = events.slice(from).find((e) => test(e.data))
              if (hit !== undefined) return done(() => found(hit))
              if (ended) done(() => fail(new Error(`stream ended before ${what}; events: ${JSON.stringify(events)}`)))
            }
            const timer = setTimeout(
              () => done(() => fail(new Error(`no ${what} within ${timeoutMs} ms; events: ${JSON.stringify(events)}`))),
              timeoutMs
            )
            const done = (then: () => void) => {
              clearTimeout(timer)
              waiters.delete(check)
              then()
            }
            waiters.add(check)
            check()
          }),
        close: () => req.destroy()
      })
    })
    req.on("error", (error) => (ended ? undefined : reject(error)))
    req.end()
  })
