import { MethodNotAllowed, RouteNotFound } from "./Errors.js"
import { fromError, type Reply } from "./Reply.js"

/**
 * The API. Every route exists bare and under /api/v1; a GET route answers HEAD too (node:http leaves the body out
 * of a HEAD answer by itself). A path here with another method is a 405 naming the methods it has; any other path is
 * a 404. The one exception in meaning: bare `GET /polls/{id}` from a browser (Accept: text/html) is the poll's page.
 */
export const ROUTES = [
  ["GET", "/", "Root"],
  ["GET", "/health", "Health"],
  ["POST", "/vote/{id}", "Vote"],
  ["GET", "/results/{id}", "Results"],
  ["POST", "/polls", "CreatePoll"],
  ["GET", "/polls", "ListPolls"],
  ["GET", "/polls/{id}", "GetPoll"],
  ["POST", "/polls/{id}/close", "ClosePoll"],
  ["GET", "/polls/{id}/stream", "Stream"],
  ["GET", "/polls/{id}/results.csv", "ExportCsv"],
  ["GET", "/polls/{id}/results.json", "ExportJson"],
  ["GET", "/metrics", "Metrics"],
  ["GET", "/openapi.json", "OpenApi"],
  ["GET", "/docs", "Docs"],
  ["GET", "/docs/swagger-ui.js", "DocsScript"],
  ["GET", "/docs/swagger-ui.css", "DocsStyle"]
] as const

type Entry = (typeof ROUTES)[number]

/** Routes no rate limit applies to: liveness, scraping, and the API document with its page. */
export const UNLIMITED: ReadonlySet<string> = new Set<Entry[2]>([
  "Root",
  "Metrics",
  "OpenApi",
  "Docs",
  "DocsScript",
  "DocsStyle"
])
type Matched<E extends Entry> = E[2] extends "GetPoll"
  ? { readonly _tag: E[2]; readonly pollId: string; readonly page: boolean }
  : E[1] extends `${string}{id}${string}`
    ? { readonly _tag: E[2]; readonly pollId: string }
    : { readonly _tag: E[2] }

/** A request's route: what to run, or the reply for a path or method that has no handler. */
export type Route = (Entry extends infer E ? (E extends Entry ? Matched<E> : never) : never) | Reject
export interface Reject {
  readonly _tag: "Reject"
  readonly reply: Reply
}

/** One path of the table with the methods it has, compiled once. */
interface Resource {
  readonly segments: ReadonlyArray<string>
  /** Where `{id}` is among the segments, or -1. */
  readonly id: number
  /** The table's methods for this path, and beside each (same index) its handler: searched, not keyed, per request. */
  readonly methods: ReadonlyArray<string>
  readonly tags: ReadonlyArray<Entry[2]>
  /** What the `Allow` of a 405 lists: the table's methods, and HEAD after GET. */
  readonly allow: ReadonlyArray<string>
}

/** The table's paths with their methods, by number of segments, compiled once. */
const BY_LENGTH: ReadonlyArray<ReadonlyArray<Resource>> = (() => {
  const byPath = new Map<string, { segments: Array<string>; methods: Array<string>; tags: Array<Entry[2]> }>()
  for (const [method, path, tag] of ROUTES) {
    const resource = byPath.get(path) ?? { segments: path.split("/").filter((s) => s !== ""), methods: [], tags: [] }
    resource.methods.push(method)
    resource.tags.push(tag)
    byPath.set(path, resource)
  }
  const byLength: Array<Array<Resource>> = []
  for (const { methods, segments, tags } of byPath.values()) {
    const sameLength = (byLength[segments.length] ??= [])
    sameLength.push({
      segments,
      id: segments.indexOf("{id}"),
      methods,
      tags,
      allow: methods.flatMap((m) => (m === "GET" ? ["GET", "HEAD"] : [m]))
    })
  }
  return byLength
})()

const find = (parts: ReadonlyArray<string>): Resource | undefined => {
  const candidates = BY_LENGTH[parts.length]
  if (candidates === undefined) return undefined
  for (const resource of candidates) {
    const { segments } = resource
    let i = 0
    while (i < segments.length && (i === resource.id || segments[i] === parts[i])) i++
    if (i === segments.length) return resource
  }
  return undefined
}

/**
 * The route of a request. Ids are passed on as sent (each handler decodes its own, so an escape that does not decode
 * is a 400 there, not a 404 here); a trailing slash is ignored, an empty segment elsewhere is not.
 */
export const route = (method: string, url: string, accept = ""): Route => {
  const query = url.indexOf("?")
  const path = query === -1 ? url : url.slice(0, query)
  const api = path.startsWith("/api/v1") && (path.length === 7 || path[7] === "/")
  const bare = api ? path.slice(7) : path
  const parts = bare.split("/").filter((p, i, all) => p !== "" || (i > 0 && i < all.length - 1))
  const resource = find(parts)
  if (resource === undefined) return { _tag: "Reject", reply: fromError(new RouteNotFound({ path })) }
  const found = resource.methods.indexOf(method === "HEAD" ? "GET" : method)
  if (found === -1) {
    return { _tag: "Reject", reply: fromError(new MethodNotAllowed({ method, path, allow: resource.allow })) }
  }
  const tag = resource.tags[found]!
  if (resource.id === -1) return { _tag: tag } as Route
  const pollId = parts[resource.id]!
  if (tag === "GetPoll") return { _tag: tag, pollId, page: !api && accept.includes("text/html") }
  return { _tag: tag, pollId } as Route
}
