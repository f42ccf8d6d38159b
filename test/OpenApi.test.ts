import { Validator } from "@seriousme/openapi-schema-validator"
import { Ajv2020 } from "ajv/dist/2020.js"
import { readdirSync, readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Domain from "../src/Domain.js"
import * as Errors from "../src/Http/Errors.js"
import { document } from "../src/Http/OpenApi.js"
import { fromError } from "../src/Http/Reply.js"
import { ROUTES, UNLIMITED } from "../src/Http/Routes.js"
import * as RateLimit from "../src/RateLimit.js"
import { type App, killAllApps, type Reply, startApp } from "./support/app.js"

/**
 * The API document (`GET /api/v1/openapi.json`) against what it describes: the route table, the refusal classes, and
 * the answers of a running app, each checked against the document's own JSON Schema for its route and status.
 */

type Json = any

const spec: Json = JSON.parse(JSON.stringify(document))

/** A path with its parameters' names left out: the table writes `{id}`, the document `{poll_id}`. */
const shape = (path: string) => path.replace(/\{[^}]+\}/g, "{}")
const documentedPath = (path: string) => (path === "/" ? "/api/v1" : `/api/v1${path}`)

const operations = (): Array<{ method: string; path: string; operation: Json }> =>
  Object.entries(spec.paths as Record<string, Record<string, Json>>).flatMap(([path, item]) =>
    Object.entries(item).map(([method, operation]) => ({ method: method.toUpperCase(), path, operation }))
  )

/** Every refusal class of the app: each has a status and a code (see Errors' `Refusal`). */
const refusalClasses = (): Array<{ name: string; status: number; code: string }> =>
  [Domain, Errors, RateLimit].flatMap((module) =>
    Object.entries(module).flatMap(([name, value]) => {
      if (typeof value !== "function" || !(value.prototype instanceof Error)) return []
      const { status, code } = new (value as new (props: never, options: object) => Errors.Refusal)({} as never, {
        disableValidation: true
      })
      return typeof status === "number" && typeof code === "string" ? [{ name, status, code }] : []
    })
  )

describe("the document", () => {
  it("is a valid OpenAPI 3.1 document", async () => {
    expect(spec.openapi).toBe("3.1.0")
    expect(spec.info).toMatchObject({ title: "livepoll", version: expect.any(String) })
    const result = await new Validator().validate(structuredClone(spec))
    expect(result.errors ?? []).toEqual([])
    expect(result.valid).toBe(true)
  })

  it("has every route of the table under /api/v1 and nothing else (HEAD, which every GET answers, left out)", () => {
    const table = ROUTES.map(([method, path]) => `${method} ${shape(documentedPath(path))}`).sort()
    const documented = operations()
      .map(({ method, path }) => `${method} ${shape(path)}`)
      .sort()
    expect(documented).toEqual(table)
  })

  it("documents a 429 on exactly the routes the handler rate-limits", () => {
    const table = new Map(ROUTES.map(([method, path, tag]) => [`${method} ${shape(documentedPath(path))}`, tag]))
    for (const { method, path, operation } of operations()) {
      const tag = table.get(`${method} ${shape(path)}`)!
      expect("429" in (operation.responses as Json), `${method} ${path}`).toBe(!UNLIMITED.has(tag))
    }
  })

  it("declares each path's parameters, and a success and the errors of any route for each operation", () => {
    for (const { method, path, operation } of operations()) {
      const where = `${method} ${path}`
      const inPath = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1])
      const declared = (operation.parameters as Array<Json>).filter((p) => p.in === "path")
      expect(
        declared.map((p) => p.name),
        where
      ).toEqual(inPath)
      for (const p of declared) expect(p.required, where).toBe(true)
      const statuses = Object.keys(operation.responses).map(Number)
      expect(
        statuses.some((s) => s >= 200 && s < 300),
        where
      ).toBe(true)
      // The listener's own refusals and the 503 of a failure nobody foresaw may answer any request.
      for (const s of [400, 408, 413, 417, 431, 503]) expect(statuses, where).toContain(s)
      expect(
        statuses.filter((s) => s >= 500),
        where
      ).toEqual([503])
    }
  })

  it("has each refusal class's answer with its code, at its status on some route or among the schemas", () => {
    const classes = refusalClasses()
    // Every refusal of the source is among them (a class in another module would be missed).
    const declared = readdirSync("src", { recursive: true, encoding: "utf8" })
      .filter((file) => file.endsWith(".ts"))
      .flatMap((file) => [...readFileSync(join("src", file), "utf8").matchAll(/readonly code = "(\w+)"/g)])
      .map(([, code]) => code)
    expect(classes.map((c) => c.code).sort()).toEqual(declared.sort())
    const referenced = new Map<string, Set<number>>()
    for (const { operation } of operations()) {
      for (const [status, response] of Object.entries(operation.responses as Record<string, Json>)) {
        for (const [, ref] of JSON.stringify(response).matchAll(/"#\/components\/schemas\/(\w+)"/g)) {
          referenced.set(ref!, (referenced.get(ref!) ?? new Set()).add(Number(status)))
        }
      }
    }
    // No route answers these: a path the table does not have, or a method its path does not.
    const unrouted = new Set(["RouteNotFound", "MethodNotAllowed"])
    for (const { name, status, code } of classes) {
      const schema = spec.components.schemas[name]
      expect(schema, name).toBeDefined()
      expect(schema.properties.error.enum, name).toEqual([code])
      expect(schema.required, name).toEqual(["error", "message"])
      if (unrouted.has(name)) expect(referenced.has(name), name).toBe(false)
      else expect([...(referenced.get(name) ?? [])], name).toEqual([status])
    }
  })

  it("resolves every reference, and keeps no schema nothing uses but the answers no route gives", () => {
    const names = new Set(Object.keys(spec.components.schemas))
    const refs = (value: Json) => [...JSON.stringify(value).matchAll(/"\$ref":"#\/components\/schemas\/([^"]+)"/g)]
    for (const [, name] of refs(spec)) expect(names, `$ref to ${name}`).toContain(name)
    // Reached from the routes, through the schemas they reach.
    const reached = new Set<string>()
    const reach = (value: Json) => {
      for (const [, name] of refs(value)) {
        if (reached.has(name!)) continue
        reached.add(name!)
        reach(spec.components.schemas[name!])
      }
    }
    reach(spec.paths)
    expect([...names].filter((name) => !reached.has(name)).sort()).toEqual([
      "MethodNotAllowed",
      "RouteNotFound",
      "StreamResults"
    ])
  })

  it("names the headers that refusals are answered with", () => {
    const limits = [{ policy: "client", key: "127.0.0.1", quota: 10, windowMs: 1000 }] as const
    const limited = RateLimit.refusal(
      limits,
      RateLimit.verdictOf(limits, [{ allowed: false, remaining: 0, resetMs: 1000, retryAfterMs: 100 }])
    )
    const answers = [
      fromError(limited),
      fromError(new Domain.OrganiserKeyRequired({ pollId: "p" })),
      fromError(new Errors.PayloadTooLarge({ message: "too large" }))
    ]
    for (const answer of answers) {
      const names = Object.keys(answer.headers ?? {}).sort()
      expect(names.length).toBeGreaterThan(0)
      const documented = operations().filter(({ operation }) => operation.responses[answer.status] !== undefined)
      expect(documented.length, `routes answering ${answer.status}`).toBeGreaterThan(0)
      for (const { method, path, operation } of documented) {
        const headers = Object.keys(operation.responses[answer.status].headers ?? {}).map((h) => h.toLowerCase())
        expect(headers.sort(), `${answer.status} of ${method} ${path}`).toEqual(names)
      }
    }
  })
})

// ---------------------------------------------------------------------------------------------------------------------
// Real answers against the document

const ajv = new Ajv2020({ strict: false, allErrors: true })
const ROOT = "urn:livepoll:openapi"
ajv.addSchema({ $id: ROOT, components: spec.components })

/** A schema of the document, its references pointed at the document's components. */
const compile = (schema: Json) =>
  ajv.compile(JSON.parse(JSON.stringify(schema).replaceAll('"#/components/', `"${ROOT}#/components/`)))

const mediaType = (reply: Pick<Reply, "headers">) => (reply.headers.get("content-type") ?? "").split(";")[0]!.trim()

/** What is wrong with `reply` as an answer of `method` on `path` (a path of the document), by the document. */
const problems = (method: string, path: string, reply: Reply): Array<string> => {
  const operation = spec.paths[path]?.[method.toLowerCase()]
  if (operation === undefined) return [`no ${method} ${path} in the document`]
  const response = operation.responses[reply.status]
  if (response === undefined) return [`${reply.status} is not among the answers of ${method} ${path}`]
  const found: Array<string> = []
  const media = mediaType(reply)
  const content = response.content?.[media]
  if (content === undefined) found.push(`${media} is not a documented content type of its ${reply.status}`)
  else if (media === "application/json") {
    const validate = compile(content.schema)
    if (!validate(reply.json)) found.push(`body ${reply.text}: ${ajv.errorsText(validate.errors)}`)
  }
  for (const name of Object.keys(response.headers ?? {})) {
    if (!reply.headers.has(name)) found.push(`no ${name} header`)
  }
  return found
}

const conforms = (method: string, path: string, reply: Reply, status: number) => {
  expect(reply.status, `${method} ${path}: ${reply.text.slice(0, 300)}`).toBe(status)
  expect(problems(method, path, reply), `${method} ${path}`).toEqual([])
}

let app: App

beforeAll(async () => {
  app = await startApp({ env: { POLL_STAGE: "memory" } })
})

afterAll(async () => {
  await killAllApps()
})

describe("the running app", () => {
  it("serves the document at /api/v1/openapi.json and bare, and HEAD without a body", async () => {
    for (const path of ["/api/v1/openapi.json", "/openapi.json"]) {
      const reply = await app.request("GET", path)
      expect(reply.status).toBe(200)
      expect(mediaType(reply)).toBe("application/json")
      expect(reply.json).toEqual(spec)
    }
    const head = await app.request("HEAD", "/api/v1/openapi.json")
    expect(head.status).toBe(200)
    expect(head.text).toBe("")
  })

  it("serves the page, and Swagger UI's files from its own origin", async () => {
    const page = await app.request("GET", "/docs")
    expect(page.status).toBe(200)
    expect(mediaType(page)).toBe("text/html")
    expect(page.headers.get("content-security-policy")).toMatch(/(^|;\s*)default-src 'self'(;|$)/)
    expect(page.headers.get("content-security-policy")).not.toMatch(/unsafe-inline|unsafe-eval/)
    const scripts = [...page.text.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/g)]
    expect(scripts.map(([, attributes]) => attributes!.trim())).toEqual(['src="/docs/swagger-ui.js"'])
    expect(scripts.every(([, , body]) => body === "")).toBe(true)
    expect(page.text).toContain('<link rel="stylesheet" href="/docs/swagger-ui.css">')

    const dist = (file: string) =>
      readFileSync(createRequire(import.meta.url).resolve(`swagger-ui-dist/${file}`), "utf8")
    const script = await app.request("GET", "/docs/swagger-ui.js")
    expect(script.status).toBe(200)
    expect(mediaType(script)).toBe("text/javascript")
    expect(script.text.startsWith(dist("swagger-ui-bundle.js").slice(0, 10_000))).toBe(true)
    expect(script.text).not.toContain("sourceMappingURL")
    const start = /SwaggerUIBundle\((\{[^)]*\})\);\s*$/.exec(script.text)
    expect(JSON.parse(start![1]!)).toMatchObject({ url: "/api/v1/openapi.json", dom_id: "#swagger-ui" })

    const style = await app.request("GET", "/docs/swagger-ui.css")
    expect(style.status).toBe(200)
    expect(mediaType(style)).toBe("text/css")
    expect(style.text.startsWith(dist("swagger-ui.css").slice(0, 10_000))).toBe(true)
    for (const asset of [script, style]) expect(asset.headers.get("cache-control")).toMatch(/max-age=\d+/)
  })

  it("answers votes, results and health as documented", async () => {
    conforms("GET", "/api/v1", await app.request("GET", "/api/v1"), 200)
    conforms("GET", "/api/v1/health", await app.request("GET", "/api/v1/health"), 200)
    conforms("GET", "/api/v1/results/{poll_id}", await app.results("oa-adhoc"), 200)
    conforms("POST", "/api/v1/vote/{poll_id}", await app.vote("oa-adhoc", "A"), 200)
    conforms("GET", "/api/v1/results/{poll_id}", await app.results("oa-adhoc"), 200)
    const vote = (poll: string, body: string) => app.request("POST", `/api/v1/vote/${poll}`, body)
    conforms("POST", "/api/v1/vote/{poll_id}", await vote("oa-adhoc", "{"), 400)
    conforms("POST", "/api/v1/vote/{poll_id}", await vote("oa-adhoc", '{"option_id":"a b"}'), 400)
    conforms("POST", "/api/v1/vote/{poll_id}", await vote("a%20b", '{"option_id":"A"}'), 400)
    conforms("POST", "/api/v1/vote/{poll_id}", await vote("oa-adhoc", "x".repeat(17_000)), 413)
    conforms("GET", "/api/v1/results/{poll_id}", await app.request("GET", `/api/v1/results/${"a".repeat(65)}`), 400)
  })

  it("answers the poll routes as documented", async () => {
    const draft = {
      id: "oa-defined",
      question: "Which?",
      options: [
        { id: "A", label: "a" },
        { id: "B", label: "b" }
      ],
      one_vote_per_voter: true
    }
    const created = await app.request("POST", "/api/v1/polls", JSON.stringify(draft))
    conforms("POST", "/api/v1/polls", created, 201)
    conforms("POST", "/api/v1/polls", await app.request("POST", "/api/v1/polls", JSON.stringify(draft)), 409)
    conforms("POST", "/api/v1/polls", await app.request("POST", "/api/v1/polls", '{"question":"q"}'), 400)
    conforms("GET", "/api/v1/polls/{poll_id}", await app.request("GET", "/api/v1/polls/oa-defined"), 200)
    conforms("GET", "/api/v1/polls/{poll_id}", await app.request("GET", "/api/v1/polls/oa-never"), 404)
    const vote = (body: object) => app.request("POST", "/api/v1/vote/oa-defined", JSON.stringify(body))
    conforms("POST", "/api/v1/vote/{poll_id}", await vote({ option_id: "A", voter_id: "ann" }), 200)
    conforms("POST", "/api/v1/vote/{poll_id}", await vote({ option_id: "A", voter_id: "ann" }), 409)
    conforms("POST", "/api/v1/vote/{poll_id}", await vote({ option_id: "C", voter_id: "bob" }), 422)
    conforms("POST", "/api/v1/vote/{poll_id}", await vote({ option_id: "A" }), 400)
    conforms("GET", "/api/v1/results/{poll_id}", await app.results("oa-defined"), 200)

    const close = (authorization?: string) =>
      app.request("POST", "/api/v1/polls/oa-defined/close", "", authorization ? { authorization } : {})
    conforms("POST", "/api/v1/polls/{poll_id}/close", await close(), 401)
    conforms("POST", "/api/v1/polls/{poll_id}/close", await close("Bearer not-the-key"), 403)
    conforms("POST", "/api/v1/polls/{poll_id}/close", await close(`Bearer ${created.json.organiser_key}`), 200)

    conforms("GET", "/api/v1/polls", await app.request("GET", "/api/v1/polls?limit=1"), 200)
    conforms("GET", "/api/v1/polls", await app.request("GET", "/api/v1/polls?status=all&limit=100"), 200)
    conforms("GET", "/api/v1/polls", await app.request("GET", "/api/v1/polls?limit=0"), 400)
    conforms("GET", "/api/v1/polls", await app.request("GET", "/api/v1/polls?status=some"), 400)
  })

  it("answers the exports, the metrics and the stream as documented", async () => {
    await app.vote("oa-export", "A")
    const exported = (poll: string, kind: string) => app.request("GET", `/api/v1/polls/${poll}/results.${kind}`)
    conforms("GET", "/api/v1/polls/{poll_id}/results.json", await exported("oa-export", "json"), 200)
    conforms("GET", "/api/v1/polls/{poll_id}/results.csv", await exported("oa-export", "csv"), 200)
    conforms("GET", "/api/v1/polls/{poll_id}/results.json", await exported("oa-nothing", "json"), 404)
    conforms("GET", "/api/v1/polls/{poll_id}/results.csv", await exported("a%20b", "csv"), 400)
    conforms("GET", "/api/v1/metrics", await app.request("GET", "/api/v1/metrics"), 200)

    // The stream's first event: its data is a StreamResults.
    const abort = new AbortController()
    const response = await fetch(`${app.baseUrl}/api/v1/polls/oa-export/stream`, { signal: abort.signal })
    const head = { status: response.status, headers: response.headers, text: "", json: undefined }
    expect(problems("GET", "/api/v1/polls/{poll_id}/stream", head)).toEqual([])
    const reader = response.body!.getReader()
    const decoder = new TextDecoder()
    let text = ""
    while (!/^event: results\ndata: .*\n\n/m.test(text)) {
      const { done, value } = await reader.read()
      if (done) break
      text += decoder.decode(value, { stream: true })
    }
    abort.abort()
    const data = /^event: results\ndata: (.*)$/m.exec(text)
    expect(data, text).not.toBeNull()
    const validate = compile({ $ref: "#/components/schemas/StreamResults" })
    expect(validate(JSON.parse(data![1]!)), ajv.errorsText(validate.errors)).toBe(true)
  })

  it("answers a client over its limit as documented, with the headers it names", async () => {
    const limited = await startApp({ env: { POLL_STAGE: "memory", RATE_LIMIT: "on", RATE_LIMIT_CLIENT: "5" } })
    // Waiting for the app to start spent some of the quota already: read until the limit answers.
    let reply = await limited.request("GET", "/api/v1/results/oa-limited")
    for (let i = 0; i < 10 && reply.status === 200; i++) {
      conforms("GET", "/api/v1/results/{poll_id}", reply, 200)
      reply = await limited.request("GET", "/api/v1/results/oa-limited")
    }
    conforms("GET", "/api/v1/results/{poll_id}", reply, 429)
    conforms("POST", "/api/v1/vote/{poll_id}", await limited.vote("oa-limited", "A"), 429)
    await limited.kill()
  })

  it("answers a wrong path or method with the schemas it documents for them", async () => {
    const check = (reply: Reply, name: string, status: number) => {
      expect(reply.status).toBe(status)
      const validate = compile({ $ref: `#/components/schemas/${name}` })
      expect(validate(reply.json), `${reply.text}: ${ajv.errorsText(validate.errors)}`).toBe(true)
    }
    check(await app.request("GET", "/api/v1/nowhere"), "RouteNotFound", 404)
    check(await app.request("DELETE", "/api/v1/openapi.json"), "MethodNotAllowed", 405)
  })
})
