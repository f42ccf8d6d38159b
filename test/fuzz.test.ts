/**
 * Fuzz suite against the real process: hostile HTTP traffic over raw TCP (any method, path, header, framing,
 * encoding, JSON shape and depth, body size, slow and half-sent bodies, the listing's query), interleaved with valid
 * votes, definitions, closes and reads (results, definitions, streams, listings, exports, the metrics, the API
 * document and its page) on a small set of polls whose ids include every Object.prototype name. Run against the
 * `memory` stage and the `full` stage (two redis-servers, flushing every 200 ms). Checked after every request: the
 * process is up; every answer is valid HTTP/1.1 (a closed connection with no answer at all is a failure unless the
 * client hung up first); every non-2xx answer is JSON {"error","message"}; no 5xx but 503; HEAD answers as GET does;
 * a well-formed request gets the answer the contract gives it. At the end of every run, and after a flush (read back
 * from Redis directly in `full`): the counts equal the 200s exactly, every key present, none extra.
 *
 * Each input class has two tests per stage: its hand-picked cases (every one tried, all failures listed), and random
 * runs of 1-8 requests mixing the class with valid traffic, which fast-check shrinks on a failure to the requests
 * that cause it. A last test per stage compares the counts with every 200 the stage gave.
 *
 * FUZZ_RUNS  random runs per class and stage (default 6). A long local run:
 *              FUZZ_RUNS=500 npx vitest run test/fuzz.test.ts
 * FUZZ_SEED  the seed a failure printed, to replay it; with the same FUZZ_RUNS, and the failing test picked with -t:
 *              FUZZ_SEED=-1450518539 npx vitest run test/fuzz.test.ts -t "full stage framing: random"
 */
import fc from "fast-check"
import type { Redis } from "ioredis"
import { afterAll, beforeAll, describe, it } from "vitest"
import { type App, type Exit, startApp } from "./support/app.js"
import * as Fuzz from "./support/fuzz.js"
import * as Raw from "./support/raw.js"
import { type RedisServer, startRedis } from "./support/redis.js"
import { sleep } from "./support/wait.js"

const RUNS = Number(process.env["FUZZ_RUNS"] ?? 6)
const SEED = process.env["FUZZ_SEED"] === undefined ? undefined : Number(process.env["FUZZ_SEED"])
const MAX_OPTIONS_PER_POLL = 256
/** Restarts of a dead app a class may spend while shrinking a crash; past them, runs on a dead app are not judged. */
const RESTARTS_PER_CLASS = 3
/**
 * How long fast-check may shrink a failure of one class. Shrinking replays runs against the one live process; a
 * failure that depends on timing may not come back, and each replay costs real requests.
 */
const SHRINK_BUDGET_MS = 20_000

type Counts = Map<string, number>

interface Definition {
  readonly options: ReadonlyArray<string>
  readonly oneVote: boolean
  readonly closesAt: string | null
  closed: boolean
  key: string | undefined
}

/** What the server must hold: every vote answered 200, every definition answered 201, every close answered 200. */
class Model {
  readonly counts = new Map<string, Counts>()
  readonly defs = new Map<string, Definition>()
  readonly voters = new Map<string, Set<string>>()
  /** One-vote polls that took a vote whose voter the test cannot name: a new voter may find itself already voted. */
  readonly unsureVoters = new Set<string>()
  /**
   * What the server showed for each of Fuzz.POLLS at the start of this run, plus this run's 200s (`unknown` where it
   * showed something that is not a count). A run is judged on what it changed, so a miscount found once is not
   * blamed on every later run that touches the poll; the absolute check at the end of the stage catches it again.
   */
  seen = new Map<string, Map<string, number | "unknown">>()
  /** Polls this run changed. */
  touched = new Set<string>()
  /** 200s since the class began, and Redis as it was then (`full`). */
  classVotes = new Map<string, Counts>()
  redisBase = new Map<string, Counts>()
}

const add = (into: Map<string, Counts>, poll: string, option: string, n = 1) => {
  let counts = into.get(poll)
  if (counts === undefined) into.set(poll, (counts = new Map()))
  counts.set(option, (counts.get(option) ?? 0) + n)
}

const isClosed = (def: Definition) => def.closed || (def.closesAt !== null && Date.parse(def.closesAt) <= Date.now())

const countVote = (model: Model, poll: string, option: string, voter: string | undefined | "unknown") => {
  add(model.counts, poll, option)
  add(model.classVotes, poll, option)
  const seen = model.seen.get(poll)
  if (seen !== undefined) {
    const n = seen.get(option)
    if (n !== "unknown") seen.set(option, (n ?? 0) + 1)
  }
  model.touched.add(poll)
  const def = model.defs.get(poll)
  if (def?.oneVote) {
    if (voter === undefined || voter === "unknown") model.unsureVoters.add(poll)
    else {
      let set = model.voters.get(poll)
      if (set === undefined) model.voters.set(poll, (set = new Set()))
      set.add(voter)
    }
  }
}

const learnDefinition = (model: Model, body: any) => {
  const known = model.defs.get(body.id)
  const key = typeof body.organiser_key === "string" ? body.organiser_key : known?.key
  if (known !== undefined) {
    known.closed ||= body.closed === true
    known.key = key
    return
  }
  model.defs.set(body.id, {
    options: body.options.map((o: any) => o?.id),
    oneVote: body.one_vote_per_voter === true,
    closesAt: typeof body.closes_at === "string" ? body.closes_at : null,
    closed: body.closed === true,
    key
  })
  model.touched.add(body.id)
}

/** A poll's `results` as the contract has them now: a defined poll lists its options (zeros too), an ad-hoc one what was voted. */
const expectedResults = (model: Model, poll: string, absolute = false): Map<string, number | "unknown"> => {
  const base: Map<string, number | "unknown"> =
    (!absolute && model.seen.get(poll)) || new Map(model.counts.get(poll) ?? [])
  const def = model.defs.get(poll)
  if (def !== undefined) return new Map(def.options.map((o) => [o, base.get(o) ?? 0]))
  return new Map([...base].filter(([, n]) => n !== 0))
}

const show = (value: unknown, max = 300) => {
  const text = typeof value === "string" ? value : (JSON.stringify(value) ?? String(value))
  return text.length > max ? `${text.slice(0, max)}… (${text.length} chars)` : text
}

const own = (o: object, key: string) => Object.prototype.hasOwnProperty.call(o, key)

/** Differences between `results` (and a defined poll's `options`) as answered and as expected. */
const compareResults = (model: Model, poll: string, body: any, absolute = false): Array<string> => {
  const results = body?.results
  if (typeof results !== "object" || results === null || Array.isArray(results)) {
    return [`results of ${poll} is ${show(results)}`]
  }
  const want = expectedResults(model, poll, absolute)
  const problems: Array<string> = []
  for (const [option, n] of want) {
    if (n === "unknown") continue
    if (!own(results, option)) problems.push(`${option} missing (expected ${n})`)
    else if (results[option] !== n) problems.push(`${option} is ${show(results[option], 80)} (expected ${n})`)
  }
  for (const option of Object.keys(results)) {
    if (!want.has(option)) problems.push(`${option} is ${show(results[option], 80)} (expected no such key)`)
  }
  const def = model.defs.get(poll)
  if (def !== undefined && body.options !== undefined) {
    const ids = Array.isArray(body.options) ? body.options.map((o: any) => o?.id) : body.options
    if (show(ids) !== show(def.options)) problems.push(`options ${show(ids)} (expected ${show(def.options)})`)
    else {
      for (const o of body.options) {
        const n = want.get(o.id)
        if (n !== "unknown" && o.votes !== n)
          problems.push(`options[${o.id}].votes is ${show(o.votes, 80)} (expected ${n})`)
      }
    }
  }
  return problems.length === 0 ? [] : [`results of poll ${poll}: ${problems.join("; ")}`]
}

// ---------------------------------------------------------------------------------------------------------------------
// One request, judged

interface Stage {
  readonly name: string
  readonly env: Record<string, string>
  readonly nodes: ReadonlyArray<RedisServer>
  readonly clients: ReadonlyArray<Redis>
  app: App
  exit: Exit | undefined
  model: Model
  restartsLeft: number
  readonly deaths: Array<string>
  /** Exchanges on the wire (the test's own reads included), and the generated requests among them. */
  requests: number
  generated: number
  runs: number
  /** When this class first failed (the shrinking budget starts there). */
  failedAt: number | undefined
  /** The current process's exit has been reported. */
  deathNoted: boolean
}

const jsonOf = (body: Buffer): { ok: true; value: any } | { ok: false } => {
  try {
    return { ok: true, value: JSON.parse(body.toString("utf8")) }
  } catch {
    return { ok: false }
  }
}

const describeResponse = (r: Raw.RawResponse) =>
  `${r.status} ${r.reason} [${r.headers.map(([n, v]) => `${n}: ${show(v, 60)}`).join(", ")}] ${show(r.body.toString("utf8"), 200)}${r.partial ? " (stream, first event)" : ""}`

const mediaType = (r: Raw.RawResponse) => (Raw.header(r, "content-type") ?? "").split(";")[0]!.trim().toLowerCase()

/** What a 2xx other than JSON may be: a page, a stream, an export, the metrics, the docs page's script and style. */
const SUCCESS_TYPES = new Set([
  "text/html",
  "text/event-stream",
  "text/csv",
  "text/plain",
  "text/javascript",
  "text/css"
])

/** The media type each of the served routes answers with (see Fuzz.Served). */
const SERVED_TYPES: Readonly<Record<Fuzz.Served, string>> = {
  metrics: "text/plain",
  openapi: "application/json",
  docs: "text/html",
  "docs.js": "text/javascript",
  "docs.css": "text/css"
}

/** What every answer must be, whatever was asked. */
const generalProblems = (r: Raw.RawResponse, method: string): Array<string> => {
  const problems: Array<string> = []
  // Methods are case-sensitive: `head` is an unknown method, not HEAD.
  const head = method === "HEAD" || (method === Raw.MAYBE_HEAD && r.body.length === 0)
  const type = mediaType(r)
  if (r.status >= 500 && r.status !== 503) problems.push(`status ${r.status}: no 5xx but 503`)
  if (r.status === 413 && !/close/i.test(Raw.header(r, "connection") ?? "")) {
    problems.push("a 413 that keeps the connection open (the contract: answered, then the connection closes)")
  }
  if (r.status < 200 || r.status >= 300) {
    if (type !== "application/json")
      problems.push(`a ${r.status} with content-type ${show(type)}, not application/json`)
    if (!head) {
      const json = jsonOf(r.body)
      if (!json.ok || typeof json.value?.error !== "string" || typeof json.value?.message !== "string") {
        problems.push(`a ${r.status} whose body is not JSON {"error","message"}: ${show(r.body.toString("utf8"), 120)}`)
      }
    }
  } else if (type === "application/json") {
    if (!head && !jsonOf(r.body).ok) problems.push(`a ${r.status} JSON body that does not parse`)
  } else if (!SUCCESS_TYPES.has(type)) {
    problems.push(`a ${r.status} with content-type ${show(type)}`)
  }
  return problems
}

type Allowed = { readonly status: number; readonly error?: string }
const describeAllowed = (allowed: ReadonlyArray<Allowed>) =>
  allowed.map((a) => (a.error === undefined ? String(a.status) : `${a.status} ${a.error}`)).join(" or ")

const votePrediction = (model: Model, v: Extract<Fuzz.Intent, { _tag: "Vote" }>): Array<Allowed> => {
  if (v.bytes > Fuzz.MAX_BODY_BYTES) return [{ status: 413, error: "payload_too_large" }]
  const def = model.defs.get(v.poll)
  if (def === undefined) {
    const counted = model.counts.get(v.poll)
    if (counted !== undefined && !counted.has(v.option) && counted.size >= MAX_OPTIONS_PER_POLL) {
      return [{ status: 422, error: "too_many_options" }]
    }
    return [{ status: 200 }]
  }
  // Where several refusals apply, the contract does not say which comes first.
  const refusals: Array<Allowed> = []
  if (isClosed(def)) refusals.push({ status: 409, error: "poll_closed" })
  if (!def.options.includes(v.option)) refusals.push({ status: 422, error: "unknown_option" })
  if (def.oneVote) {
    if (v.voter === undefined) refusals.push({ status: 400, error: "voter_required" })
    else if (model.voters.get(v.poll)?.has(v.voter)) refusals.push({ status: 409, error: "already_voted" })
  }
  if (refusals.length > 0) return refusals
  if (def.oneVote && model.unsureVoters.has(v.poll)) return [{ status: 200 }, { status: 409, error: "already_voted" }]
  return [{ status: 200 }]
}

/** The answer the contract gives this intent, against the model as it stands before the answer is applied. */
const intentProblems = (model: Model, intent: Fuzz.Intent, r: Raw.RawResponse): Array<string> => {
  const json = jsonOf(r.body)
  const body: any = json.ok ? json.value : undefined
  const expectOne = (allowed: ReadonlyArray<Allowed>): Array<string> =>
    allowed.some((a) => a.status === r.status && (a.error === undefined || a.error === body?.error))
      ? []
      : [`expected ${describeAllowed(allowed)}, got ${r.status}${body?.error === undefined ? "" : ` ${body.error}`}`]
  switch (intent._tag) {
    case "Any":
      return []
    case "Vote": {
      const problems = expectOne(votePrediction(model, intent))
      if (r.status === 200 && show(body) !== show({ poll_id: intent.poll, option_id: intent.option })) {
        problems.push(
          `200 body ${show(body)} (expected {"poll_id":${show(intent.poll)},"option_id":${show(intent.option)}})`
        )
      }
      return problems
    }
    case "TooLarge":
      return expectOne([{ status: 413, error: "payload_too_large" }])
    case "DefineInvalid":
      return expectOne([
        { status: 400, error: "invalid_poll" },
        { status: 400, error: "invalid_poll_id" }
      ])
    case "Define": {
      if (intent.bytes > Fuzz.MAX_BODY_BYTES) return expectOne([{ status: 413, error: "payload_too_large" }])
      const id = intent.draft.id
      const allowed: Array<Allowed> = []
      if (id !== undefined && model.defs.has(id)) allowed.push({ status: 409, error: "poll_exists" })
      else {
        allowed.push({ status: 201 })
        // Defining an id that already has ad-hoc votes: the contract does not say.
        if (id !== undefined && model.counts.has(id)) allowed.push({ status: 409, error: "poll_exists" })
      }
      // A lone surrogate may be refused at the edge, or stored so that every later step works.
      if (intent.surrogate) allowed.push({ status: 400, error: "invalid_poll" })
      const problems = expectOne(allowed)
      if (r.status === 201) {
        const d = intent.draft
        if (
          typeof body?.id !== "string" ||
          (d.id !== undefined && body.id !== d.id) ||
          body.question !== d.question ||
          show(body.options) !== show(d.options) ||
          body.one_vote_per_voter !== (d.one_vote_per_voter ?? false) ||
          body.closed !== false
        ) {
          problems.push(`201 body ${show(body)} does not match the definition sent`)
        }
      }
      return problems
    }
    case "Close": {
      const def = model.defs.get(intent.poll)
      if (def === undefined) {
        return expectOne([{ status: 404, error: "poll_not_found" }, { status: 401 }, { status: 403 }])
      }
      // An organiser key is owed only where the 201 gave one.
      const allowed: Array<Allowed> =
        def.key === undefined || intent.auth === "key"
          ? [{ status: 200 }, ...(def.closed ? [{ status: 409, error: "poll_closed" }] : [])]
          : intent.auth === "none"
            ? [{ status: 401 }]
            : [{ status: 403 }]
      const problems = expectOne(allowed)
      if (r.status === 200 && (body?.id !== intent.poll || body?.closed !== true)) {
        problems.push(`200 body ${show(body)} is not the closed poll ${intent.poll}`)
      }
      return problems
    }
    case "Results": {
      const problems = expectOne([{ status: 200 }])
      if (r.status !== 200) return problems
      if (body?.poll_id !== intent.poll) problems.push(`poll_id ${show(body?.poll_id)} (expected ${show(intent.poll)})`)
      if (typeof body?.served_via !== "string") problems.push(`served_via ${show(body?.served_via)}`)
      return [...problems, ...compareResults(model, intent.poll, body)]
    }
    case "GetPoll": {
      if (intent.page) {
        const problems = expectOne([{ status: 200 }])
        if (r.status === 200 && mediaType(r) !== "text/html") problems.push(`the page came as ${mediaType(r)}`)
        return problems
      }
      const def = model.defs.get(intent.poll)
      if (def === undefined) return expectOne([{ status: 404, error: "poll_not_found" }])
      const problems = expectOne([{ status: 200 }])
      if (r.status !== 200) return problems
      const ids = Array.isArray(body?.options) ? body.options.map((o: any) => o?.id) : undefined
      if (body?.id !== intent.poll || show(ids) !== show(def.options) || body?.closed !== def.closed) {
        problems.push(
          `definition ${show(body)} (expected id ${intent.poll}, options ${show(def.options)}, closed ${def.closed})`
        )
      }
      if (body !== undefined && own(body, "organiser_key"))
        problems.push("the organiser key is shown again after the 201")
      return problems
    }
    case "Stream": {
      const problems = expectOne([{ status: 200 }])
      if (r.status !== 200) return problems
      if (mediaType(r) !== "text/event-stream") return [...problems, `a stream as ${mediaType(r)}`]
      const event = /(?:^|\n)event: results\ndata: ([^\n]*)\n\n/.exec(r.body.toString("utf8"))
      if (event === null) return [...problems, `no results event first: ${show(r.body.toString("utf8"))}`]
      const data = jsonOf(Buffer.from(event[1]!))
      if (!data.ok) return [...problems, `the event's data is not JSON: ${show(event[1])}`]
      return [...problems, ...compareResults(model, intent.poll, data.value).map((p) => `first stream event: ${p}`)]
    }
    case "Health":
      return expectOne([{ status: 200 }])
    case "Root": {
      const problems = expectOne([{ status: 200 }])
      if (r.status === 200 && show(body) !== show({ status: "healthy" })) problems.push(`body ${show(body)}`)
      return problems
    }
    case "List": {
      const meaning = intent.meaning
      if ("invalid" in meaning) return expectOne([{ status: 400, error: "invalid_request" }])
      const problems = expectOne([{ status: 200 }])
      if (r.status !== 200) return problems
      const polls = body?.polls
      if (!Array.isArray(polls)) return [...problems, `polls is ${show(polls)}`]
      if (polls.length > meaning.limit) problems.push(`${polls.length} polls on a page of ${meaning.limit}`)
      if (body.next_cursor !== null && typeof body.next_cursor !== "string") {
        problems.push(`next_cursor is ${show(body.next_cursor)}`)
      }
      for (const poll of polls) {
        if (typeof poll?.id !== "string" || typeof poll?.open !== "boolean") problems.push(`a poll ${show(poll, 120)}`)
        else if (meaning.status !== "all" && poll.open !== (meaning.status === "open")) {
          problems.push(`poll ${poll.id} (open: ${poll.open}) in a listing of status=${meaning.status}`)
        }
      }
      return problems
    }
    case "Export": {
      // Defined, or voted on (as this run found it, or since): exported; else never heard of.
      const counts = [...expectedResults(model, intent.poll).values()]
      const known = model.defs.has(intent.poll) || counts.some((n) => n === "unknown" || n > 0)
      const problems = expectOne(known ? [{ status: 200 }] : [{ status: 404, error: "poll_not_found" }])
      if (r.status !== 200) return problems
      if (intent.format === "csv") {
        return mediaType(r) === "text/csv" ? problems : [...problems, `a CSV export as ${mediaType(r)}`]
      }
      const rows = body?.results
      if (body?.poll_id !== intent.poll || !Array.isArray(rows)) return [...problems, `export ${show(body)}`]
      // As `results` would have them: by option id (a map without a prototype, so any id is a plain key).
      const results: Record<string, unknown> = Object.create(null)
      for (const row of rows) results[row?.option_id] = row?.votes
      const total = rows.reduce((sum: number, row: any) => sum + (typeof row?.votes === "number" ? row.votes : 0), 0)
      if (body.total_votes !== total) problems.push(`total_votes ${show(body.total_votes)}, the rows sum to ${total}`)
      if ((body.poll === null) !== !model.defs.has(intent.poll)) problems.push(`poll ${show(body.poll, 120)}`)
      return [...problems, ...compareResults(model, intent.poll, { results }).map((p) => `export: ${p}`)]
    }
    case "Served": {
      const problems = expectOne([{ status: 200 }])
      if (r.status !== 200) return problems
      const type = SERVED_TYPES[intent.what]
      if (mediaType(r) !== type) problems.push(`${intent.what} as ${mediaType(r)}, not ${type}`)
      if (intent.what === "openapi" && body?.openapi !== "3.1.0") problems.push(`a document of ${show(body?.openapi)}`)
      if (intent.what === "metrics" && !r.body.includes("livepoll_")) problems.push("metrics without livepoll_")
      return problems
    }
  }
}

/** Applies an answer to the model: a 200 vote is counted whatever asked for it, a 201 or a closed poll is learned. */
const absorb = (model: Model, intent: Fuzz.Intent, r: Raw.RawResponse, method: string) => {
  if (method === "HEAD" || method === Raw.MAYBE_HEAD || r.partial) return
  const json = jsonOf(r.body)
  if (!json.ok) return
  const body = json.value
  if (typeof body !== "object" || body === null) return
  const keys = Object.keys(body).sort()
  if (
    r.status === 200 &&
    keys.join() === "option_id,poll_id" &&
    typeof body.poll_id === "string" &&
    typeof body.option_id === "string"
  ) {
    const voter =
      intent._tag === "Vote" && intent.poll === body.poll_id && intent.option === body.option_id
        ? intent.voter
        : "unknown"
    countVote(model, body.poll_id, body.option_id, voter)
  }
  if (
    (r.status === 200 || r.status === 201) &&
    typeof body.id === "string" &&
    Array.isArray(body.options) &&
    typeof body.closed === "boolean"
  ) {
    learnDefinition(model, body)
  }
}

const isDead = (stage: Stage) => stage.exit !== undefined

/** The app's last words: the error line of a crash (not the stack frames under it), then its last lines. */
const outputTail = (app: App) => {
  const recent = app.lines.slice(-60)
  const error = recent.findIndex((l) => /^\w*Error\b|level=ERROR|"level":"ERROR"/.test(l))
  const picked = error === -1 ? recent.slice(-6) : [...recent.slice(error, error + 2), "…", ...recent.slice(-2)]
  return picked.map((l) => `    ${show(l, 300)}`).join("\n")
}

/** A run's own ids for Fuzz.FRESH, and the rewriting of a request's bytes and intents to them. */
interface Fresh {
  readonly ids: ReadonlyArray<string>
  readonly text: (s: string) => string
  readonly plan: (p: Raw.Plan) => Raw.Plan
  readonly intent: (i: Fuzz.Intent) => Fuzz.Intent
}

const freshFor = (run: number): Fresh => {
  const ids = Fuzz.FRESH.map((p, i) => `F${run.toString(36).padStart(p.length - 2, "0")}${String.fromCharCode(97 + i)}`)
  const pairs = Fuzz.FRESH.map((p, i) => [p, ids[i]!] as const)
  const text = (s: string) => pairs.reduce((t, [from, to]) => t.split(from).join(to), s)
  const bytes = (b: Uint8Array) => {
    const out = Buffer.from(b)
    for (const [from, to] of pairs) {
      for (let i = out.indexOf(from); i !== -1; i = out.indexOf(from, i + to.length)) out.write(to, i, "latin1")
    }
    return out
  }
  return {
    ids,
    text,
    // Renamed over all the bytes at once (a placeholder may straddle two writes), then cut where they were cut.
    plan: (p) => {
      const writes = p.steps.flatMap((s) => (s._tag === "Write" ? [s.bytes] : []))
      const all = bytes(Buffer.concat(writes))
      let at = 0
      const steps = p.steps.map((s) => {
        if (s._tag !== "Write") return s
        const piece = all.subarray(at, at + s.bytes.length)
        at += s.bytes.length
        return Raw.write(piece)
      })
      return { ...p, steps }
    },
    intent: (i) =>
      "poll" in i
        ? ({ ...i, poll: text(i.poll) } as Fuzz.Intent)
        : i._tag === "Define" && i.draft.id !== undefined
          ? { ...i, draft: { ...i.draft, id: text(i.draft.id) } }
          : i
  }
}

/** Sends one request (and a HEAD's GET twin) and returns everything wrong with what came back. */
const judge = async (stage: Stage, r: Fuzz.Req, fresh: Fresh): Promise<Array<string>> => {
  const model = stage.model
  stage.generated += 1
  const problems: Array<string> = []
  const exchangeOnce = async (one: Fuzz.Req) => {
    const plan = fresh.plan(one.plan((poll) => model.defs.get(fresh.text(poll))?.key))
    const outcome = await Raw.exchange(stage.app.port, plan)
    stage.requests += 1
    // A connection that ends with no answer may be the process dying: give its exit a moment to arrive.
    if (outcome.responses.length === 0 && outcome.end === "server-closed") {
      for (let i = 0; i < 10 && !isDead(stage); i++) await sleep(30)
    }
    return { plan, outcome }
  }
  const check = (one: Fuzz.Req, plan: Raw.Plan, outcome: Raw.Outcome, what: string) => {
    const found: Array<string> = []
    if (outcome.malformed !== undefined) found.push(`${what}not valid HTTP/1.1: ${outcome.malformed}`)
    if (outcome.end === "timed-out") {
      found.push(`${what}no complete answer within ${plan.timeoutMs} ms of the last byte sent (a hang)`)
    }
    const owed = plan.responses ?? 1
    const last = outcome.responses[outcome.responses.length - 1]
    const closing = last !== undefined && /close/i.test(Raw.header(last, "connection") ?? "")
    if (outcome.responses.length === 0 && outcome.end === "server-closed" && one.expect !== "client-hangs-up") {
      found.push(`${what}the connection closed with no response at all`)
    } else if (
      one.expect === "answer" &&
      outcome.end === "server-closed" &&
      outcome.responses.length < owed &&
      !closing
    ) {
      found.push(`${what}the connection closed after ${outcome.responses.length} of ${owed} answers`)
    }
    outcome.responses.forEach((res, i) => {
      const method = plan.methods[i] ?? "GET"
      const intent = fresh.intent(one.intents[i] ?? { _tag: "Any" })
      const label = outcome.responses.length > 1 ? `${what}answer ${i + 1}: ` : what
      for (const p of [...generalProblems(res, method), ...intentProblems(model, intent, res)])
        found.push(`${label}${p}`)
      absorb(model, intent, res, method)
    })
    return found
  }
  const first = await exchangeOnce(r)
  if (isDead(stage)) return []
  problems.push(...check(r, first.plan, first.outcome, ""))
  const answers = (o: Raw.Outcome) =>
    o.responses.length === 0
      ? `no answer (${o.end}${o.clientReason === undefined ? "" : `: ${o.clientReason}`})`
      : o.responses.map(describeResponse).join("\n      ")
  let dump = `    answer: ${answers(first.outcome)}`
  if (r.getTwin !== undefined && !isDead(stage)) {
    const twin = await exchangeOnce(r.getTwin)
    if (isDead(stage)) return []
    problems.push(...check(r.getTwin, twin.plan, twin.outcome, "GET twin: "))
    const [head, get] = [first.outcome.responses[0], twin.outcome.responses[0]]
    if (head !== undefined && get !== undefined) {
      if (head.status !== get.status)
        problems.push(`HEAD answered ${head.status}, GET ${get.status}: HEAD answers as GET does`)
      else if (mediaType(head) !== mediaType(get))
        problems.push(`HEAD content-type ${mediaType(head)}, GET ${mediaType(get)}`)
    }
    dump += `\n    GET twin: ${answers(twin.outcome)}`
  }
  return problems.length === 0 ? [] : [...problems.map((p) => `  - ${p}`), dump]
}

// ---------------------------------------------------------------------------------------------------------------------
// Stage lifecycle: the app, restarts, the model's view of the stores

const watch = (stage: Stage) => {
  const app = stage.app
  void app.exited.then((exit) => {
    if (stage.app === app) stage.exit = exit
  })
}

const get = (stage: Stage, path: string) => {
  stage.requests += 1
  return Raw.exchange(stage.app.port, {
    steps: [Raw.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`)],
    methods: ["GET"],
    responses: 1,
    timeoutMs: Fuzz.TIMEOUT_MS
  }).then((o) => {
    const r = o.responses[0]
    const json = r === undefined ? { ok: false as const } : jsonOf(r.body)
    return { status: r?.status, body: json.ok ? json.value : undefined, text: r?.body.toString("utf8") ?? `(${o.end})` }
  })
}

/** `use` over `items`, a few dozen at a time (a long run touches thousands of polls). */
const eachOf = async <A>(items: ReadonlyArray<A>, use: (a: A) => Promise<void>) => {
  for (let i = 0; i < items.length; i += 32) await Promise.all(items.slice(i, i + 32).map(use))
}

const HGETALL = "return redis.call('HGETALL', KEYS[1])"

/** Each poll's counts hash, summed over the nodes (read as a flat reply: a field named __proto__ stays a field). */
const readRedis = async (stage: Stage, polls: Iterable<string>) => {
  const counts = new Map<string, Counts>()
  const problems: Array<string> = []
  await eachOf([...new Set(polls)], async (poll) => {
    const replies = await Promise.all(
      stage.clients.map((c) => c.eval(HGETALL, 1, `poll:{${poll}}:counts`) as Promise<Array<string>>)
    )
    if (replies.filter((flat) => flat.length > 0).length > 1)
      problems.push(`poll ${poll} has counts on more than one node`)
    for (const flat of replies) {
      for (let i = 0; i + 1 < flat.length; i += 2) add(counts, poll, flat[i]!, Number(flat[i + 1]))
    }
  })
  return { counts, problems }
}

/** Waits for the write-behind buffer to be empty (`pending_votes` 0 on /health). */
const flushed = async (stage: Stage) => {
  if (stage.nodes.length === 0) return
  const deadline = Date.now() + 5000
  for (;;) {
    const health = await get(stage, "/api/v1/health")
    if (health.status === 200 && health.body?.pending_votes === 0) return
    if (Date.now() > deadline)
      throw new Error(`the write-behind buffer did not empty within 5 s; health: ${health.status} ${show(health.text)}`)
    await sleep(50)
  }
}

/** After a restart: what survived is what the stores hold now. */
const resync = async (stage: Stage) => {
  const old = stage.model
  const model = new Model()
  stage.model = model
  if (stage.nodes.length === 0) return
  const { counts } = await readRedis(stage, [...old.counts.keys(), ...Fuzz.POLLS])
  for (const [poll, options] of counts) for (const [option, n] of options) add(model.counts, poll, option, n)
  for (const poll of new Set([...old.defs.keys(), ...Fuzz.POLLS])) {
    const found = await get(stage, `/api/v1/polls/${poll}`)
    if (found.status === 200 && found.body?.id === poll) {
      learnDefinition(model, { ...found.body, organiser_key: old.defs.get(poll)?.key })
    }
  }
  for (const [poll, voters] of old.voters) model.voters.set(poll, voters)
  for (const poll of old.unsureVoters) model.unsureVoters.add(poll)
  for (const poll of old.counts.keys()) if (model.defs.get(poll)?.oneVote) model.unsureVoters.add(poll)
  model.touched = new Set()
  await classStart(stage)
}

const restart = async (stage: Stage) => {
  await stage.app.kill().catch(() => {})
  stage.app = await startApp({ env: stage.env, readyTimeoutMs: 30_000 })
  stage.exit = undefined
  stage.deathNoted = false
  watch(stage)
  await resync(stage)
}

const classStart = async (stage: Stage) => {
  stage.model.classVotes = new Map()
  if (stage.nodes.length === 0) return
  await flushed(stage)
  stage.model.redisBase = (await readRedis(stage, Fuzz.POLLS)).counts
}

/** Redis against the model: the hash of every poll equals what it held when the class began plus the class's 200s. */
const redisProblems = async (stage: Stage, absolute: boolean): Promise<Array<string>> => {
  const model = stage.model
  const pool = new Set(Fuzz.POLLS)
  const polls = absolute
    ? [...new Set([...model.counts.keys(), ...Fuzz.POLLS])]
    : [...new Set([...model.classVotes.keys(), ...Fuzz.POLLS])]
  const want = (poll: string): Counts => {
    if (absolute || !pool.has(poll)) return model.counts.get(poll) ?? new Map()
    const sum = new Map(model.redisBase.get(poll) ?? [])
    for (const [o, n] of model.classVotes.get(poll) ?? []) sum.set(o, (sum.get(o) ?? 0) + n)
    return sum
  }
  let problems: Array<string> = []
  // A batch may still be on its way when the buffer says empty: allow it a moment to land.
  for (let attempt = 0; attempt < 10; attempt++) {
    const read = await readRedis(stage, polls)
    problems = [...read.problems]
    for (const poll of polls) {
      const expected = want(poll)
      const got = read.counts.get(poll) ?? new Map()
      const diffs: Array<string> = []
      for (const [o, n] of expected)
        if (n !== 0 && got.get(o) !== n) diffs.push(`${o} is ${got.get(o) ?? "missing"} (expected ${n})`)
      for (const [o, n] of got) if (!expected.has(o)) diffs.push(`${o} is ${n} (expected no such field)`)
      if (diffs.length > 0) problems.push(`Redis poll:{${poll}}:counts: ${diffs.join("; ")}`)
    }
    if (problems.length === 0) return []
    await sleep(100)
  }
  return problems
}

/** Reads the results of the set polls and every poll this run touched; returns the differences from the model. */
const resultsProblems = async (stage: Stage, absolute: boolean) => {
  const model = stage.model
  const polls = absolute
    ? new Set([...Fuzz.POLLS, ...model.counts.keys(), ...model.defs.keys()])
    : new Set([...Fuzz.POLLS, ...model.touched])
  const problems: Array<string> = []
  await eachOf([...polls], async (poll) => {
    const answer = await get(stage, `/api/v1/results/${poll}`)
    if (answer.status !== 200) problems.push(`GET /api/v1/results/${poll}: ${answer.status} ${show(answer.text)}`)
    else problems.push(...compareResults(model, poll, answer.body, absolute))
  })
  return problems
}

/** At the start of a run: what the server shows for each set poll (and the run's fresh ones, which have nothing). */
const baseline = async (stage: Stage, fresh: Fresh) => {
  const model = stage.model
  model.touched = new Set()
  model.seen = new Map(fresh.ids.map((id) => [id, new Map()]))
  await Promise.all(
    Fuzz.POLLS.map(async (poll) => {
      const answer = await get(stage, `/api/v1/results/${poll}`)
      const results = answer.body?.results
      if (answer.status !== 200 || typeof results !== "object" || results === null) {
        throw new Error(`GET /api/v1/results/${poll} at the start of a run: ${answer.status} ${show(answer.text)}`)
      }
      const seen = new Map<string, number | "unknown">(
        Object.keys(results).map((o) => [o, typeof results[o] === "number" ? results[o] : "unknown"])
      )
      // A key the server should show and does not is an old miscount, reported by the run that made it.
      for (const option of expectedResults(model, poll, true).keys()) if (!seen.has(option)) seen.set(option, "unknown")
      model.seen.set(poll, seen)
    })
  )
}

const died = (stage: Stage, when: string) =>
  `the app exited (code ${stage.exit?.code}, signal ${stage.exit?.signal}) ${when}\n  its last output:\n${outputTail(stage.app)}`

/** One run: the requests in order, each judged; then the counts. */
const runOnce = async (stage: Stage, reqs: ReadonlyArray<Fuzz.Req>) => {
  // Past the budget, the shrink candidates left are passed over: the smallest failure found so far is reported.
  if (stage.failedAt !== undefined && Date.now() - stage.failedAt > SHRINK_BUDGET_MS) return
  try {
    await judgeRun(stage, reqs)
  } catch (e) {
    stage.failedAt ??= Date.now()
    throw e
  }
}

const judgeRun = async (stage: Stage, reqs: ReadonlyArray<Fuzz.Req>) => {
  if (isDead(stage) && !stage.deathNoted) {
    stage.deathNoted = true
    stage.deaths.push(`${stage.name}: between runs`)
    throw new Error(died(stage, "between runs, after the last check of the run before"))
  }
  if (isDead(stage)) {
    // Only while shrinking a crash (the run that found it has failed already): a fresh process, while the budget lasts.
    if (stage.restartsLeft <= 0) return
    stage.restartsLeft -= 1
    await restart(stage)
  }
  stage.runs += 1
  const fresh = freshFor(stage.runs)
  const where = `(in this run ${Fuzz.FRESH.map((f, i) => `${f} is ${fresh.ids[i]}`).join(", ")})`
  await baseline(stage, fresh)
  for (const [i, r] of reqs.entries()) {
    const problems = await judge(stage, r, fresh)
    if (isDead(stage)) {
      let message = died(stage, `while answering: ${r.label}`)
      stage.deaths.push(`${stage.name}: ${r.label}`)
      stage.deathNoted = true
      if (stage.restartsLeft > 0) {
        stage.restartsLeft -= 1
        await restart(stage)
        await judge(stage, r, fresh)
        message += isDead(stage)
          ? "\n  sent alone to a fresh process, it exits again"
          : "\n  sent alone to a fresh process, it did not exit"
      }
      throw new Error(`request ${i + 1} of ${reqs.length}: ${message}`)
    }
    if (problems.length > 0) {
      throw new Error(`request ${i + 1} of ${reqs.length}: ${r.label}\n${problems.join("\n")}\n  ${where}`)
    }
  }
  const end = await resultsProblems(stage, false)
  if (isDead(stage)) {
    stage.deathNoted = true
    stage.deaths.push(`${stage.name}: after ${reqs.at(-1)?.label ?? "an empty run"}`)
    throw new Error(died(stage, `after the run's last request (${reqs.at(-1)?.label}), before the run ended`))
  }
  if (end.length > 0) throw new Error(`at the end of the run ${where}:\n${listed(end)}`)
}

/** After the class: wait for the buffer to flush, then the results again and Redis itself. */
const classEnd = async (stage: Stage): Promise<Array<string>> => {
  if (isDead(stage) || stage.nodes.length === 0) return []
  await flushed(stage)
  return [
    ...(await resultsProblems(stage, false)).map((p) => `after a flush: ${p}`),
    ...(await redisProblems(stage, false))
  ]
}

// ---------------------------------------------------------------------------------------------------------------------

const STAGES = [
  { name: "memory", redisNodes: 0, env: (): Record<string, string> => ({ POLL_STAGE: "memory" }) },
  {
    name: "full",
    redisNodes: 2,
    env: (nodes: ReadonlyArray<RedisServer>): Record<string, string> => ({
      POLL_STAGE: "full",
      REDIS_NODES: nodes.map((n) => n.url).join(","),
      FLUSH_INTERVAL_MS: "200"
    })
  }
] as const

const listed = (problems: ReadonlyArray<string>, max = 30) =>
  [
    ...problems.slice(0, max).map((p) => `  - ${p}`),
    ...(problems.length > max ? [`  … and ${problems.length - max} more`] : [])
  ].join("\n")

const CLASS_NAMES = Object.keys(Fuzz.CLASSES) as Array<Fuzz.ClassName>

for (const spec of STAGES)
  describe(`${spec.name} stage`, () => {
    let stage: Stage
    let started = 0

    beforeAll(async () => {
      started = Date.now()
      const nodes = await Promise.all(Array.from({ length: spec.redisNodes }, () => startRedis()))
      const env = spec.env(nodes)
      stage = {
        name: spec.name,
        env,
        nodes,
        clients: nodes.map((n) => n.client()),
        app: await startApp({ env, readyTimeoutMs: 30_000 }),
        exit: undefined,
        model: new Model(),
        restartsLeft: RESTARTS_PER_CLASS,
        deaths: [],
        requests: 0,
        generated: 0,
        runs: 0,
        failedAt: undefined,
        deathNoted: false
      }
      watch(stage)
    })

    afterAll(async () => {
      if (stage === undefined) return
      const seconds = ((Date.now() - started) / 1000).toFixed(1)
      console.info(
        `fuzz ${spec.name}: ${stage.generated} generated requests, ${stage.requests} exchanges in all, ${seconds} s`
      )
      await stage.app.kill()
      await Promise.all(stage.nodes.map((n) => n.stop()))
    })

    const prepare = async () => {
      if (isDead(stage)) await restart(stage)
      stage.restartsLeft = RESTARTS_PER_CLASS
      stage.failedAt = undefined
      await classStart(stage)
    }

    /** The class's closing checks (after a flush), added to whatever failed before them. */
    const finish = async (failures: Array<string>) => {
      const after = await classEnd(stage).catch((e: Error) => [e.message])
      const all = [...failures, ...(after.length === 0 ? [] : [`after the class:\n${listed(after)}`])]
      if (all.length > 0) throw new Error(all.join("\n\n"))
    }

    for (const name of CLASS_NAMES) {
      it(`${name}: the hand-picked cases`, async () => {
        await prepare()
        const failures: Array<string> = []
        // Each case on its own, and every one of them tried: the report lists all that fail.
        for (const example of Fuzz.EXAMPLES[name]) {
          stage.restartsLeft = 1
          stage.failedAt = undefined
          try {
            await runOnce(stage, example)
          } catch (e) {
            failures.push(e instanceof Error ? e.message : String(e))
          }
          if (isDead(stage)) await restart(stage)
        }
        await finish(failures)
      }, 120_000)

      it(
        `${name}: random, interleaved with valid traffic`,
        async () => {
          await prepare()
          const arb = fc.array(
            fc.oneof({ weight: 2, arbitrary: Fuzz.CLASSES[name] }, { weight: 3, arbitrary: Fuzz.validTraffic }),
            { minLength: 1, maxLength: 8 }
          )
          try {
            await fc.assert(
              fc.asyncProperty(arb, (reqs) => runOnce(stage, reqs)),
              {
                numRuns: RUNS,
                ...(SEED === undefined ? {} : { seed: SEED })
              }
            )
          } catch (e) {
            // fast-check's error names the shrunk counterexample; its cause says what was wrong with it.
            const cause = e instanceof Error && e.cause instanceof Error ? `\n${e.cause.message}` : ""
            return finish([`${e instanceof Error ? e.message : String(e)}${cause}`])
          }
          await finish([])
        },
        180_000 + RUNS * 8000
      )
    }

    it("the counts equal the 200s exactly, across everything sent", async () => {
      if (isDead(stage)) await restart(stage)
      await flushed(stage)
      const problems = [
        ...stage.deaths.map((d) => `the app exited on: ${d}`),
        ...(await resultsProblems(stage, true)),
        ...(stage.nodes.length > 0 ? await redisProblems(stage, true) : [])
      ]
      if (problems.length > 0) throw new Error(listed(problems))
    }, 60_000)
  })
