import fc from "fast-check"
import * as Raw from "./raw.js"

/**
 * Arbitraries for test/fuzz.test.ts: HTTP requests as raw bytes, each with a one-line description (what fast-check
 * prints for a shrunk counterexample) and, where the contract decides the answer, what the request means (its
 * intent) so the test can predict the status and check the counts.
 */

/** Every own property name of Object.prototype: ids that are also the names of JavaScript object members. */
export const PROTOTYPE_NAMES: ReadonlyArray<string> = Object.getOwnPropertyNames(Object.prototype)

/** The polls, options and voters the valid traffic uses: a small set, so votes pile up on the same keys. */
export const POLLS: ReadonlyArray<string> = [...PROTOTYPE_NAMES, "p1", "p-2", "A.b_c", "..", "0"]
/**
 * Placeholders that the test replaces, in every byte of a request, by poll ids new to each run. What a run does to
 * those polls does not depend on the runs before it, so a failure found on them shrinks to the requests that cause
 * it. Each is as long as its replacement, so Content-Length and chunk sizes stay right.
 */
export const FRESH: ReadonlyArray<string> = ["Fresh-0000a", "Fresh-0000b"]
export const OPTIONS: ReadonlyArray<string> = [...PROTOTYPE_NAMES, "A", "B", "pizza", "x.y-z_0"]
export const VOTERS: ReadonlyArray<string> = [...PROTOTYPE_NAMES, "ann", "bob", "u:1"]

export const MAX_BODY_BYTES = 16 * 1024
/** How long a server may keep waiting for bytes that never come before the client gives up on it. */
export const PATIENCE_MS = 400
export const TIMEOUT_MS = 3000

const ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-."

export interface Draft {
  readonly id?: string
  readonly question: string
  readonly options: ReadonlyArray<{ readonly id: string; readonly label: string }>
  readonly one_vote_per_voter?: boolean
  readonly closes_at?: string
}

/** What a request means to the contract, when it is well formed; `Any` when only the general invariants apply. */
export type Intent =
  | {
      readonly _tag: "Vote"
      readonly poll: string
      readonly option: string
      readonly voter?: string
      readonly bytes: number
    }
  | { readonly _tag: "Define"; readonly draft: Draft; readonly surrogate: boolean; readonly bytes: number }
  | { readonly _tag: "DefineInvalid" }
  /** A body over the limit: 413, whatever it holds. */
  | { readonly _tag: "TooLarge" }
  | { readonly _tag: "Close"; readonly poll: string; readonly auth: "key" | "none" | "wrong" }
  | { readonly _tag: "Results"; readonly poll: string }
  | { readonly _tag: "GetPoll"; readonly poll: string; readonly page: boolean }
  | { readonly _tag: "Stream"; readonly poll: string }
  | { readonly _tag: "Health" }
  | { readonly _tag: "Root" }
  | { readonly _tag: "List"; readonly meaning: ListMeaning }
  | { readonly _tag: "Export"; readonly poll: string; readonly format: "csv" | "json" }
  /** The metrics, the API document, its page and the page's files: served whatever the state. */
  | { readonly _tag: "Served"; readonly what: Served }
  | { readonly _tag: "Any" }

const ANY: Intent = { _tag: "Any" }

/**
 * `answer`: the bytes are a complete message (well formed or not): the server must answer within TIMEOUT_MS.
 * `answer-or-wait`: the server may rightly wait for more bytes; closing without an answer is still a failure.
 * `client-hangs-up`: the client closes first; no answer is owed.
 */
export type Expectation = "answer" | "answer-or-wait" | "client-hangs-up"

export interface Req {
  readonly label: string
  /** The exchange; `keyOf` gives a defined poll's organiser key, for closes that present it. */
  readonly plan: (keyOf: (poll: string) => string | undefined) => Raw.Plan
  /** One per response the server owes, in order; responses past these are `Any`. */
  readonly intents: ReadonlyArray<Intent>
  readonly expect: Expectation
  /** A HEAD request's GET twin: sent right after it, and its status must be the HEAD's. */
  readonly getTwin?: Req
  readonly [fc.toStringMethod]: () => string
}

const req = (fields: Omit<Req, typeof fc.toStringMethod>): Req => ({
  ...fields,
  [fc.toStringMethod]: () => fields.label
})

// ---------------------------------------------------------------------------------------------------------------------
// Messages

type Bytes = string | Buffer

export interface Message {
  readonly method: Bytes
  readonly target: Bytes
  readonly version?: Bytes
  readonly headers: ReadonlyArray<readonly [Bytes, Bytes]>
  readonly body?: Buffer
}

const buf = (b: Bytes) => (typeof b === "string" ? Buffer.from(b, "latin1") : b)
/** Text as UTF-8 bytes (ids, JSON); `buf` keeps a string's code units as single bytes (header syntax). */
const utf8 = (s: string) => Buffer.from(s, "utf8")

export const encode = (m: Message): Buffer =>
  Buffer.concat([
    buf(m.method),
    buf(" "),
    typeof m.target === "string" ? utf8(m.target) : m.target,
    buf(" "),
    buf(m.version ?? "HTTP/1.1"),
    buf("\r\n"),
    ...m.headers.flatMap(([n, v]) => [buf(n), buf(": "), buf(v), buf("\r\n")]),
    buf("\r\n"),
    m.body ?? Buffer.alloc(0)
  ])

/** Printable ASCII as is, anything else as an escape: a label stays one readable line whatever the bytes. */
const show = (b: Bytes, max = 80) => {
  const text = typeof b === "string" ? b : b.toString("latin1")
  const cut = text.length > max ? text.slice(0, max) : text
  const printable = cut.replace(/[^\x20-\x7e]/g, (c) => {
    const code = c.charCodeAt(0)
    if (c === "\r") return "\\r"
    if (c === "\n") return "\\n"
    return code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`
  })
  return text.length > max ? `${printable}… (${text.length} bytes)` : printable
}

/** How a message's bytes go out: all at once, or cut at some offsets with short pauses between the pieces. */
export interface Delivery {
  readonly cuts: ReadonlyArray<number>
  readonly pauseMs: number
}

const deliveryArb: fc.Arbitrary<Delivery | undefined> = fc.oneof(
  { weight: 4, arbitrary: fc.constant(undefined) },
  {
    weight: 1,
    arbitrary: fc.record({
      cuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 3 }),
      pauseMs: fc.integer({ min: 0, max: 5 })
    })
  }
)

const stepsOf = (bytes: Buffer, delivery: Delivery | undefined): Array<Raw.Step> => {
  if (delivery === undefined) return [Raw.write(bytes)]
  const offsets = [...new Set(delivery.cuts.map((c) => Math.floor(c * bytes.length)))]
    .filter((o) => o > 0 && o < bytes.length)
    .sort((a, b) => a - b)
  const steps: Array<Raw.Step> = []
  let at = 0
  for (const o of [...offsets, bytes.length]) {
    if (steps.length > 0) steps.push(Raw.pause(delivery.pauseMs))
    steps.push(Raw.write(bytes.subarray(at, o)))
    at = o
  }
  return steps
}

const deliveryLabel = (d: Delivery | undefined) => (d === undefined ? "" : ` [in ${d.cuts.length + 1} pieces]`)

const methodOf = (m: Message) => buf(m.method).toString("latin1")

/** One complete message that the server owes one answer. */
const single = (
  m: Message,
  options: {
    readonly label: string
    readonly intent?: Intent
    readonly delivery?: Delivery | undefined
    readonly expect?: Expectation
    readonly method?: string
  }
): Req => {
  const bytes = encode(m)
  const expect = options.expect ?? "answer"
  return req({
    label: `${options.label}${deliveryLabel(options.delivery)}`,
    plan: () => ({
      steps: stepsOf(bytes, options.delivery),
      methods: [options.method ?? methodOf(m)],
      ...(expect === "answer" ? { responses: 1 } : { quietMs: 100, patienceMs: PATIENCE_MS }),
      timeoutMs: TIMEOUT_MS
    }),
    intents: [options.intent ?? ANY],
    expect
  })
}

// ---------------------------------------------------------------------------------------------------------------------
// Ids and paths

const fromList = <A>(list: ReadonlyArray<A>) => fc.constantFrom(...list)

/** Any id of the contract's charset (1-64 of A-Z a-z 0-9 _ - .), Object.prototype's names included. */
export const charsetId: fc.Arbitrary<string> = fc.oneof(
  fromList(PROTOTYPE_NAMES),
  fc.string({ unit: fc.constantFrom(...ID_CHARS), minLength: 1, maxLength: 64 })
)

const poolPoll = fc.oneof({ weight: 3, arbitrary: fromList(POLLS) }, { weight: 2, arbitrary: fromList(FRESH) })
const poolOption = fromList(OPTIONS)
const poolVoter = fromList(VOTERS)
const anyPoll = fc.oneof({ weight: 3, arbitrary: poolPoll }, { weight: 1, arbitrary: charsetId })
const anyOption = fc.oneof({ weight: 4, arbitrary: poolOption }, { weight: 1, arbitrary: charsetId })

const prefixArb = fc.constantFrom("", "/api/v1")

/** Every character percent-encoded: the same id to a server that decodes the path. */
const percentAll = (s: string) => [...utf8(s)].map((b) => `%${b.toString(16).toUpperCase().padStart(2, "0")}`).join("")

const oddSegment: fc.Arbitrary<Bytes> = fc.oneof(
  fc.constantFrom(
    "%E0%A4%A",
    "%zz",
    "%",
    "%00",
    "%2F",
    "%2e%2e",
    "%C0%AF",
    "%ED%A0%80",
    "%F0%9F%98%80",
    "..",
    ".",
    "",
    "a b",
    "é",
    "%u0041",
    "%%41"
  ),
  fc.uint8Array({ minLength: 1, maxLength: 4 }).map((a) => Buffer.from(a.map((x) => x | 0x80))),
  fc.integer({ min: 65, max: 20_000 }).map((n) => "a".repeat(n)),
  charsetId.map(percentAll)
)

const segmentArb: fc.Arbitrary<Bytes> = fc.oneof(
  { weight: 3, arbitrary: charsetId },
  { weight: 2, arbitrary: oddSegment }
)

const joinBytes = (parts: ReadonlyArray<Bytes>): Bytes =>
  parts.every((p) => typeof p === "string") ? parts.join("") : Buffer.concat(parts.map(buf))

/** What `GET /polls` must make of its query: the parameters it uses, or a refusal (400 invalid_request). */
export type ListMeaning =
  { readonly status: "open" | "closed" | "all"; readonly limit: number } | { readonly invalid: string }

export interface ListQuery {
  /** "" or `?` and the parameters, as sent. */
  readonly text: string
  readonly meaning: ListMeaning
}

type ListParam = "status" | "limit" | "cursor"

/** One of the listing's own parameters: left out, a value it takes, one it refuses, or given twice. */
const listParamArb = (
  name: ListParam,
  valid: ReadonlyArray<string>,
  invalid: ReadonlyArray<string>
): fc.Arbitrary<{ readonly pairs: ReadonlyArray<string>; readonly value?: string; readonly refused?: string }> =>
  fc.oneof(
    { weight: 4, arbitrary: fc.constant({ pairs: [] }) },
    ...(valid.length === 0
      ? []
      : [{ weight: 4, arbitrary: fromList(valid).map((v) => ({ pairs: [`${name}=${v}`], value: v })) }]),
    {
      weight: 1,
      arbitrary: fromList(invalid).map((v) => ({ pairs: [`${name}=${v}`], refused: `${name}=${v.slice(0, 20)}` }))
    },
    {
      weight: 1,
      arbitrary: fromList([...valid, ...invalid]).map((v) => ({
        pairs: [`${name}=${v}`, `${name}=${v}`],
        refused: `${name} twice`
      }))
    }
  )

/** Parameters the listing ignores: names it does not have (Object.prototype's among them), any value. */
const ignoredParamArb = fc
  .tuple(
    fc.constantFrom("x", "Status", "LIMIT", "page", "q", "__proto__", "constructor", "toString", "cursor_", "limit "),
    fc.constantFrom("", "1", "open", "%zz", "%00", "%E0%A4%A", "a+b", "__proto__", "-1", "%26")
  )
  .map(([name, value]) => `${name.replace(" ", "%20")}=${value}`)

/**
 * A query of `GET /polls`, with what it means. Valid cursors are left out (only the server can write one); the
 * refused ones cannot decode as one (a character a cursor never has, or longer than any).
 */
export const listQueryArb: fc.Arbitrary<ListQuery> = fc
  .tuple(
    listParamArb("status", ["open", "closed", "all"], ["", "OPEN", "opened", "open,closed", "__proto__", "open%20"]),
    listParamArb(
      "limit",
      ["1", "2", "20", "99", "100"],
      ["0", "101", "-1", "1.5", "01", "1e2", "", "+1", "abc", "1".repeat(20)]
    ),
    listParamArb("cursor", [], ["", "a.b", "%zz", "x%20y", "a".repeat(200), "%00"]),
    fc.array(ignoredParamArb, { maxLength: 3 }),
    fc.array(fc.nat(), { minLength: 12, maxLength: 12 })
  )
  .map(([status, limit, cursor, ignored, order]) => {
    const pairs = [...status.pairs, ...limit.pairs, ...cursor.pairs, ...ignored]
    // In any order: each parameter's meaning does not depend on where it stands.
    const shuffled = pairs.map((p, i) => [order[i] ?? 0, p] as const).sort((a, b) => a[0] - b[0])
    const text = shuffled.length === 0 ? "" : `?${shuffled.map(([, p]) => p).join("&")}`
    const refused = status.refused ?? limit.refused ?? cursor.refused
    return {
      text,
      meaning:
        refused !== undefined
          ? { invalid: refused }
          : {
              status: (status.value ?? "all") as "open" | "closed" | "all",
              limit: limit.value === undefined ? 20 : Number(limit.value)
            }
    }
  })

/** A route's path with its id slot filled by anything a path segment can hold. */
const routeTarget: fc.Arbitrary<Bytes> = fc
  .tuple(
    prefixArb,
    fc.constantFrom(
      "/",
      "/health",
      "/vote/#",
      "/results/#",
      "/polls",
      "/polls/#",
      "/polls/#/close",
      "/polls/#/stream",
      "/polls/#/results.csv",
      "/polls/#/results.json",
      "/metrics",
      "/openapi.json",
      "/docs",
      "/docs/swagger-ui.js",
      "/docs/swagger-ui.css"
    ),
    segmentArb,
    fc.oneof(
      { weight: 3, arbitrary: fc.constantFrom("", "", "/", "?x=1", "?", "#frag", "?a=%zz&b") },
      { weight: 1, arbitrary: listQueryArb.map((q) => q.text) }
    )
  )
  .map(([prefix, template, id, tail]) => {
    const [before, after] = template.split("#") as [string, string | undefined]
    return after === undefined ? `${prefix}${before}${tail}` : joinBytes([prefix, before, id, after, tail])
  })

const targetArb: fc.Arbitrary<Bytes> = fc.oneof(
  { weight: 4, arbitrary: routeTarget },
  {
    weight: 2,
    arbitrary: fc
      .tuple(prefixArb, fc.array(segmentArb, { minLength: 0, maxLength: 5 }))
      .map(([prefix, segments]) => joinBytes([prefix, "/", ...segments.flatMap((s, i) => (i === 0 ? [s] : ["/", s]))]))
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      "*",
      "http://127.0.0.1/health",
      "//",
      "/api/v1",
      "/api/v1/",
      "/api/v2/health",
      "/API/V1/health",
      "/health/",
      "/vote/",
      "/vote//x",
      "/./health",
      "/api/v1/../health",
      "/results/%E0%A4%A",
      `/results/${"a".repeat(65)}`,
      `/results/${"a".repeat(5000)}`,
      `/vote/${"a".repeat(20_000)}`,
      "health",
      "/\0"
    )
  }
)

// ---------------------------------------------------------------------------------------------------------------------
// Methods and headers

const KNOWN_METHODS = [
  "GET",
  "POST",
  "PUT",
  "DELETE",
  "PATCH",
  "OPTIONS",
  "HEAD",
  "TRACE",
  "PROPFIND",
  "PURGE",
  "SEARCH"
]
const TOKEN_CHARS = "!#$%&'*+-.^_`|~ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

const tokenArb = fc.string({ unit: fc.constantFrom(...TOKEN_CHARS), minLength: 1, maxLength: 20 })

/** A method and whether it is a token (then the request line is well formed and must be answered). */
const methodArb: fc.Arbitrary<{ readonly method: Bytes; readonly token: boolean }> = fc.oneof(
  { weight: 4, arbitrary: fromList(KNOWN_METHODS).map((method) => ({ method, token: true })) },
  { weight: 2, arbitrary: fromList(KNOWN_METHODS).map((m) => ({ method: m.toLowerCase(), token: true })) },
  {
    weight: 1,
    arbitrary: fc.constantFrom("CONNECT", "VOTE", "M-SEARCH", "Get").map((method) => ({ method, token: true }))
  },
  { weight: 2, arbitrary: tokenArb.map((method) => ({ method, token: true })) },
  {
    weight: 1,
    arbitrary: fc.uint8Array({ minLength: 1, maxLength: 12 }).map((a) => ({ method: Buffer.from(a), token: false }))
  }
)

const contentTypeArb = fc.constantFrom(
  "application/json",
  "application/json; charset=utf-8",
  "text/plain",
  "application/x-www-form-urlencoded",
  "application/json; charset=utf-16",
  "multipart/form-data; boundary=x",
  "*/*",
  ""
)

const FRAMING_HEADERS = new Set(["content-length", "transfer-encoding", "host", "connection", "expect", "upgrade"])
const headerValueArb = fc.string({
  unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
  maxLength: 60
})

/** Syntactically valid extra headers: token names, visible-character values (and obs-text bytes). */
const validHeaderArb: fc.Arbitrary<readonly [Bytes, Bytes]> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.tuple(
      tokenArb.filter((n) => !FRAMING_HEADERS.has(n.toLowerCase())),
      headerValueArb.map((v) => v.trim())
    )
  },
  {
    weight: 1,
    arbitrary: fc.tuple(
      fc.constant("Accept"),
      fc.constantFrom("text/html", "*/*", "application/json", "text/event-stream")
    )
  },
  { weight: 1, arbitrary: fc.tuple(fc.constant("Content-Type"), contentTypeArb) },
  {
    weight: 1,
    arbitrary: fc.tuple(
      fc.constant("Cookie"),
      fc.oneof(
        poolVoter.map((v) => `voter=${v}`),
        headerValueArb
      )
    )
  },
  { weight: 1, arbitrary: fc.tuple(fc.constant("Authorization"), fc.oneof(fc.constant("Bearer "), headerValueArb)) },
  {
    weight: 1,
    arbitrary: fc.tuple(
      tokenArb.filter((n) => !FRAMING_HEADERS.has(n.toLowerCase())),
      fc.uint8Array({ minLength: 1, maxLength: 8 }).map((a) => Buffer.from(a.map((x) => x | 0x80)))
    )
  }
)

/** Headers Node's parser or the server may refuse, or that change the protocol. */
const oddHeadersArb: fc.Arbitrary<{ readonly headers: ReadonlyArray<readonly [Bytes, Bytes]>; readonly what: string }> =
  fc.oneof(
    fc
      .integer({ min: 1000, max: 40_000 })
      .map((n) => ({ headers: [["X-Big", "h".repeat(n)] as const], what: `one header of ${n} bytes` })),
    fc.integer({ min: 50, max: 3000 }).map((n) => ({
      headers: Array.from({ length: n }, (_, i) => [`X-H${i}`, "v"] as const),
      what: `${n} headers`
    })),
    fc.constantFrom(
      { headers: [["Expect", "100-continue"]] as const, what: "Expect: 100-continue" },
      { headers: [["Expect", "the-unexpected"]] as const, what: "Expect: the-unexpected" },
      {
        headers: [
          ["Connection", "Upgrade"],
          ["Upgrade", "websocket"]
        ] as const,
        what: "Upgrade: websocket"
      },
      {
        headers: [
          ["Connection", "Upgrade, HTTP2-Settings"],
          ["Upgrade", "h2c"],
          ["HTTP2-Settings", "AAMAAABkAAQAAP__"]
        ] as const,
        what: "Upgrade: h2c"
      },
      {
        headers: [
          ["Host", "a"],
          ["Host", "b"]
        ] as const,
        what: "two Host headers"
      },
      { headers: [["Bad Name", "x"]] as const, what: "a header name with a space" },
      { headers: [["X-Nul", "a\0b"]] as const, what: "a NUL in a header value" },
      { headers: [["X-Ctl", "a\x7fb"]] as const, what: "a DEL in a header value" },
      { headers: [["X-Cr", "a\rb"]] as const, what: "a bare CR in a header value" },
      { headers: [["X-Fold", "a\r\n b"]] as const, what: "an obs-folded header" },
      { headers: [["X-Space ", "a"]] as const, what: "a space before the colon" },
      { headers: [["", "no name"]] as const, what: "an empty header name" },
      { headers: [["NoColon\r\nX-A", "b"]] as const, what: "a header line without a colon" },
      { headers: [["Connection", "close, keep-alive, te"]] as const, what: "a contradictory Connection" },
      {
        headers: [
          ["Te", "trailers"],
          ["Trailer", "X-T"]
        ] as const,
        what: "TE and Trailer"
      }
    )
  )

const hostHeader = ["Host", "127.0.0.1"] as const
const connectionArb = fc.constantFrom<ReadonlyArray<readonly [string, string]>>(
  [],
  [["Connection", "close"]],
  [["Connection", "keep-alive"]]
)

// ---------------------------------------------------------------------------------------------------------------------
// Valid traffic: votes, definitions, closes, reads

export interface VoteShape {
  readonly poll: string
  readonly option: string
  readonly voter: string | undefined
  readonly cookie: boolean
}

const voteShapeArb: fc.Arbitrary<VoteShape> = fc.record({
  poll: poolPoll,
  option: anyOption,
  voter: fc.option(poolVoter, { nil: undefined, freq: 2 }),
  cookie: fc.boolean()
})

/** The JSON of a vote: plain, spaced, with unicode escapes, or with extra properties the server must ignore. */
const voteJsonArb = (option: string, voter: string | undefined): fc.Arbitrary<{ text: string; how: string }> => {
  const fields: Record<string, string> = { option_id: option }
  if (voter !== undefined) fields["voter_id"] = voter
  const plain = JSON.stringify(fields)
  return fc.oneof(
    { weight: 4, arbitrary: fc.constant({ text: plain, how: "" }) },
    { weight: 1, arbitrary: fc.constant({ text: ` \n${JSON.stringify(fields, null, 2)}\t`, how: " (spaced)" }) },
    {
      weight: 1,
      arbitrary: fc.constant({
        text: plain.replace(/"option_id":"([^"]*)"/, (_, id: string) => {
          const escaped = [...id].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`).join("")
          return `"option_id":"${escaped}"`
        }),
        how: " (option_id as \\u escapes)"
      })
    },
    {
      weight: 1,
      arbitrary: fc
        .array(
          fc.tuple(fc.oneof(fromList(PROTOTYPE_NAMES), fc.string({ maxLength: 8 })), fc.jsonValue({ maxDepth: 3 })),
          {
            minLength: 1,
            maxLength: 3
          }
        )
        .map((extra) => {
          const kept = extra.filter(([k]) => k !== "option_id" && k !== "voter_id")
          const parts = [...kept.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`), plain.slice(1, -1)]
          return { text: `{${parts.join(",")}}`, how: ` (extra ${kept.map(([k]) => k).join(", ")})` }
        })
    }
  )
}

const voteMessage = (
  prefix: string,
  shape: VoteShape,
  json: string,
  extra: ReadonlyArray<readonly [Bytes, Bytes]>,
  chunked: boolean
): Message => {
  const body = utf8(json)
  const cookie = shape.cookie && shape.voter !== undefined
  return {
    method: "POST",
    target: `${prefix}/vote/${shape.poll}`,
    headers: [
      hostHeader,
      ...(chunked ? [["Transfer-Encoding", "chunked"] as const] : [["Content-Length", String(body.length)] as const]),
      ...(cookie ? [["Cookie", `voter=${shape.voter}`] as const] : []),
      ...extra
    ],
    body: chunked ? chunk(body, 3) : body
  }
}

/** A body in `pieces` chunks of chunked transfer coding. */
const chunk = (body: Buffer, pieces: number): Buffer => {
  const size = Math.max(1, Math.ceil(body.length / pieces))
  const parts: Array<Buffer> = []
  for (let at = 0; at < body.length; at += size) {
    const piece = body.subarray(at, at + size)
    parts.push(buf(`${piece.length.toString(16)}\r\n`), piece, buf("\r\n"))
  }
  parts.push(buf("0\r\n\r\n"))
  return Buffer.concat(parts)
}

export interface VoteOptions {
  readonly prefix?: string
  readonly json?: { readonly text: string; readonly how: string }
  readonly type?: ReadonlyArray<readonly [string, string]>
  readonly connection?: ReadonlyArray<readonly [string, string]>
  readonly chunked?: boolean
  readonly delivery?: Delivery | undefined
}

/** A well-formed vote: the answer is predicted exactly from the model. */
export const voteReq = (shape: VoteShape, options: VoteOptions = {}): Req => {
  const prefix = options.prefix ?? "/api/v1"
  const bodyVoter = shape.cookie ? undefined : shape.voter
  const json = options.json ?? {
    text: JSON.stringify({ option_id: shape.option, ...(bodyVoter === undefined ? {} : { voter_id: bodyVoter }) }),
    how: ""
  }
  const connection = options.connection ?? []
  const chunked = options.chunked ?? false
  const m = voteMessage(prefix, shape, json.text, [...(options.type ?? []), ...connection], chunked)
  return single(m, {
    label: `vote ${prefix}/vote/${shape.poll} ${show(json.text, 120)}${json.how}${
      shape.cookie && shape.voter !== undefined ? ` cookie voter=${shape.voter}` : ""
    }${chunked ? " chunked" : ""}${connection.length > 0 ? ` Connection: ${connection[0]![1]}` : ""}`,
    intent: {
      _tag: "Vote",
      poll: shape.poll,
      option: shape.option,
      ...(shape.voter === undefined ? {} : { voter: shape.voter }),
      bytes: Buffer.byteLength(json.text)
    },
    delivery: options.delivery
  })
}

export const validVote: fc.Arbitrary<Req> = voteShapeArb.chain((shape) =>
  fc
    .tuple(
      prefixArb,
      voteJsonArb(shape.option, shape.cookie ? undefined : shape.voter),
      fc.constantFrom<ReadonlyArray<readonly [string, string]>>(
        [],
        [["Content-Type", "application/json"]],
        [["Content-Type", "text/plain"]]
      ),
      connectionArb,
      fc.boolean(),
      deliveryArb
    )
    .map(([prefix, json, type, connection, chunked, delivery]) =>
      voteReq(shape, { prefix, json, type, connection, chunked, delivery })
    )
)

const LONE_SURROGATE = "\ud800"

const textArb = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom("Where do we eat?", "Which?", "é ü ß 😀", "q") },
  { weight: 1, arbitrary: fc.constantFrom(`lone ${LONE_SURROGATE} surrogate`, "\udfff", `a${LONE_SURROGATE}`) }
)

const draftArb: fc.Arbitrary<Draft> = fc
  .record({
    id: fc.option(poolPoll, { nil: undefined, freq: 8 }),
    question: textArb,
    options: fc.uniqueArray(poolOption, { minLength: 2, maxLength: 6 }),
    labels: fc.array(textArb, { minLength: 6, maxLength: 6 }),
    one_vote_per_voter: fc.option(fc.boolean(), { nil: undefined }),
    closes_at: fc.option(fc.constantFrom("2001-01-01T00:00:00.000Z", "2999-01-01T00:00:00.000Z"), {
      nil: undefined,
      freq: 3
    })
  })
  .map(({ id, question, options, labels, one_vote_per_voter, closes_at }) => ({
    ...(id === undefined ? {} : { id }),
    question,
    options: options.map((o, i) => ({ id: o, label: labels[i]! })),
    ...(one_vote_per_voter === undefined ? {} : { one_vote_per_voter }),
    ...(closes_at === undefined ? {} : { closes_at })
  }))

const hasLoneSurrogate = (s: string) => /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s)

const postJson = (target: string, text: string, extra: ReadonlyArray<readonly [Bytes, Bytes]> = []): Message => {
  const body = utf8(text)
  return { method: "POST", target, headers: [hostHeader, ["Content-Length", String(body.length)], ...extra], body }
}

export const defineReq = (
  draft: Draft,
  prefix = "/api/v1",
  connection: ReadonlyArray<readonly [string, string]> = []
): Req => {
  const text = JSON.stringify(draft)
  const surrogate = hasLoneSurrogate(draft.question) || draft.options.some((o) => hasLoneSurrogate(o.label))
  return single(postJson(`${prefix}/polls`, text, connection), {
    label: `define POST ${prefix}/polls ${show(text, 200)}`,
    intent: { _tag: "Define", draft, surrogate, bytes: Buffer.byteLength(text) }
  })
}

export const definePoll: fc.Arbitrary<Req> = fc
  .tuple(prefixArb, draftArb, connectionArb)
  .map(([prefix, draft, connection]) => defineReq(draft, prefix, connection))

const validDraft = (id: string) => ({
  id,
  question: "q",
  options: [
    { id: "A", label: "a" },
    { id: "B", label: "b" }
  ]
})

/** Definitions the schema must refuse (400 invalid_poll). */
export const invalidDefinition: fc.Arbitrary<Req> = fc
  .tuple(
    prefixArb,
    poolPoll,
    // Each a valid definition with one thing wrong (the JSON keeps the valid one's key order).
    fc.constantFrom(
      (id: string) => ({ ...validDraft(id), options: [{ id: "A", label: "a" }] }),
      (id: string) => ({ ...validDraft(id), question: " " }),
      (id: string) => ({
        ...validDraft(id),
        options: [
          { id: "A", label: "a" },
          { id: "A", label: "b" }
        ]
      }),
      (id: string) => ({
        ...validDraft(id),
        options: [
          { id: "A", label: "" },
          { id: "B", label: "b" }
        ]
      }),
      (id: string) => ({ ...validDraft(id), id: `${id}/x` }),
      (id: string) => ({
        ...validDraft(id),
        options: Array.from({ length: 65 }, (_, i) => ({ id: `o${i}`, label: "x" }))
      }),
      (id: string) => ({ ...validDraft(id), one_vote_per_voter: "yes" }),
      (id: string) => ({ ...validDraft(id), closes_at: "tomorrow" }),
      (id: string) => ({ ...validDraft(id), extra: 1 }),
      (id: string) => ({
        ...validDraft(id),
        options: [
          { id: "A b", label: "a" },
          { id: "B", label: "b" }
        ]
      })
    )
  )
  .map(([prefix, id, make]) => {
    const text = JSON.stringify(make(id))
    return single(postJson(`${prefix}/polls`, text), {
      label: `invalid definition POST ${prefix}/polls ${show(text, 160)}`,
      intent: { _tag: "DefineInvalid" }
    })
  })

export const closeReq = (poll: string, auth: "key" | "none" | "wrong", prefix = "/api/v1"): Req => {
  const target = `${prefix}/polls/${poll}/close`
  return req({
    label: `close POST ${target} (${auth === "key" ? "with its organiser key" : auth === "none" ? "no key" : "a wrong key"})`,
    plan: (keyOf) => {
      const key = auth === "key" ? keyOf(poll) : auth === "wrong" ? "not-the-key-0123456789" : undefined
      const m: Message = {
        method: "POST",
        target,
        headers: [
          hostHeader,
          ["Content-Length", "0"],
          ...(key === undefined ? [] : [["Authorization", `Bearer ${key}`] as const])
        ]
      }
      return { steps: [Raw.write(encode(m))], methods: ["POST"], responses: 1, timeoutMs: TIMEOUT_MS }
    },
    intents: [{ _tag: "Close", poll, auth }],
    expect: "answer"
  })
}

export const closePoll: fc.Arbitrary<Req> = fc
  .tuple(prefixArb, poolPoll, fc.constantFrom<"key" | "none" | "wrong">("key", "key", "none", "wrong"))
  .map(([prefix, poll, auth]) => closeReq(poll, auth, prefix))

export type Served = "metrics" | "openapi" | "docs" | "docs.js" | "docs.css"
export type ReadKind = "results" | "poll" | "page" | "stream" | "health" | "root" | "list" | "csv" | "json" | Served

const SERVED_PATHS: Readonly<Record<Served, string>> = {
  metrics: "/metrics",
  openapi: "/openapi.json",
  docs: "/docs",
  "docs.js": "/docs/swagger-ui.js",
  "docs.css": "/docs/swagger-ui.css"
}

const isServed = (kind: ReadKind): kind is Served => Object.hasOwn(SERVED_PATHS, kind)

/** `query`: the listing's (a `list` read), "" for the others. */
const readTarget = (kind: ReadKind, prefix: string, poll: string, query = "") => {
  if (isServed(kind)) return `${prefix}${SERVED_PATHS[kind]}`
  switch (kind) {
    case "results":
      return `${prefix}/results/${poll}`
    case "poll":
      return `${prefix}/polls/${poll}`
    case "page":
      return `/polls/${poll}`
    case "stream":
      return `${prefix}/polls/${poll}/stream`
    case "health":
      return `${prefix}/health`
    case "list":
      return `${prefix}/polls${query}`
    case "csv":
    case "json":
      return `${prefix}/polls/${poll}/results.${kind}`
    case "root":
      return prefix === "" ? "/" : `${prefix}/`
  }
}

const LIST_ALL: ListMeaning = { status: "all", limit: 20 }

const readIntent = (kind: ReadKind, poll: string, meaning: ListMeaning = LIST_ALL): Intent => {
  if (isServed(kind)) return { _tag: "Served", what: kind }
  switch (kind) {
    case "results":
      return { _tag: "Results", poll }
    case "poll":
      return { _tag: "GetPoll", poll, page: false }
    case "page":
      return { _tag: "GetPoll", poll, page: true }
    case "stream":
      return { _tag: "Stream", poll }
    case "health":
      return { _tag: "Health" }
    case "list":
      return { _tag: "List", meaning }
    case "csv":
    case "json":
      return { _tag: "Export", poll, format: kind }
    case "root":
      return { _tag: "Root" }
  }
}

const readMessage = (
  method: string,
  kind: ReadKind,
  prefix: string,
  poll: string,
  extra: ReadonlyArray<readonly [Bytes, Bytes]>,
  query = ""
): Message => ({
  method,
  target: readTarget(kind, prefix, poll, query),
  headers: [hostHeader, ...(kind === "page" ? [["Accept", "text/html,application/xhtml+xml"] as const] : []), ...extra]
})

const readKindArb = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.constantFrom<ReadKind>("results", "results", "results", "poll", "page", "stream", "health", "root")
  },
  { weight: 3, arbitrary: fc.constantFrom<ReadKind>("list", "csv", "json") },
  { weight: 1, arbitrary: fc.constantFrom<ReadKind>("metrics", "openapi", "docs", "docs.js", "docs.css") }
)

export const readReq = (
  kind: ReadKind,
  poll: string,
  prefix = "/api/v1",
  connection: ReadonlyArray<readonly [string, string]> = [],
  query: ListQuery = { text: "", meaning: LIST_ALL }
) => {
  const m = readMessage("GET", kind, prefix, poll, connection, query.text)
  return single(m, {
    label: `GET ${show(m.target, 120)}${kind === "page" ? " (Accept: text/html)" : ""}`,
    intent: readIntent(kind, poll, query.meaning)
  })
}

/** `GET /polls` with `text` as its query, which must mean `meaning`. */
export const listReq = (text: string, meaning: ListMeaning, prefix = "/api/v1") =>
  readReq("list", "", prefix, [], { text, meaning })

export const read: fc.Arbitrary<Req> = fc
  .tuple(readKindArb, prefixArb, anyPoll, connectionArb, listQueryArb)
  .map(([kind, prefix, poll, connection, query]) => readReq(kind, poll, prefix, connection, query))

/** HEAD on a route, then GET on the same: the same status, and no body for HEAD. */
export type HeadKind = ReadKind | "vote" | "polls" | "close" | "unknown"

export const headReq = (kind: HeadKind, poll: string, prefix = "/api/v1"): Req => {
  const target =
    kind === "vote"
      ? `${prefix}/vote/${poll}`
      : kind === "polls"
        ? `${prefix}/polls`
        : kind === "close"
          ? `${prefix}/polls/${poll}/close`
          : kind === "unknown"
            ? `${prefix}/nowhere/${poll}`
            : readTarget(kind, prefix, poll)
  const accept = kind === "page" ? [["Accept", "text/html"] as const] : []
  const get = single(
    { method: "GET", target, headers: [hostHeader, ...accept] },
    {
      label: `GET ${target}`,
      intent:
        kind === "vote" || kind === "polls" || kind === "close" || kind === "unknown" ? ANY : readIntent(kind, poll)
    }
  )
  // Connection: close, so that body bytes sent after a HEAD answer would show up instead of hiding in the socket.
  const head = encode({ method: "HEAD", target, headers: [hostHeader, ...accept, ["Connection", "close"]] })
  return req({
    label: `HEAD ${target}${kind === "page" ? " (Accept: text/html)" : ""}, then GET`,
    // Read to the close: body bytes after the HEAD answer would be left over, and reported.
    plan: () => ({ steps: [Raw.write(head)], methods: ["HEAD"], quietMs: 100, timeoutMs: TIMEOUT_MS }),
    intents: [ANY],
    expect: "answer",
    getTwin: get
  })
}

export const headRequest: fc.Arbitrary<Req> = fc
  .tuple(
    fc.oneof(
      { weight: 4, arbitrary: readKindArb.map((k): HeadKind => k) },
      { weight: 1, arbitrary: fc.constantFrom<HeadKind>("vote", "polls", "close", "unknown") }
    ),
    prefixArb,
    anyPoll
  )
  .map(([kind, prefix, poll]) => headReq(kind, poll, prefix))

/** The valid traffic every class is interleaved with. */
export const validTraffic: fc.Arbitrary<Req> = fc.oneof(
  { weight: 8, arbitrary: validVote },
  { weight: 2, arbitrary: definePoll },
  { weight: 1, arbitrary: invalidDefinition },
  { weight: 1, arbitrary: closePoll },
  { weight: 4, arbitrary: read }
)

// ---------------------------------------------------------------------------------------------------------------------
// Hostile classes

/** Any message, and how sure it is to be answered. */
export const messageReq = (m: Message, label: string, expect: Expectation = "answer"): Req => {
  const line = `${methodOf(m)} ${buf(m.target).toString("latin1")}`
  // A HEAD whose request line is malformed is not surely a HEAD: its answer may carry a body.
  const maybeHead = line.startsWith("HEAD ") && !/^HEAD [\x21-\x7e]+$/.test(line)
  return single(m, { label, expect, ...(maybeHead ? { method: Raw.MAYBE_HEAD } : {}) })
}

/** Arbitrary methods on arbitrary paths, with a small body or none. */
export const methodsAndPaths: fc.Arbitrary<Req> = fc
  .tuple(
    methodArb,
    targetArb,
    fc.option(fc.uint8Array({ maxLength: 40 }), { nil: undefined }),
    connectionArb,
    fc.option(fc.constantFrom("text/html", "*/*"), { nil: undefined })
  )
  .map(([{ method, token }, target, body, connection, accept]) => {
    const targetText = buf(target).toString("latin1")
    const clean = token && /^[\x21-\x7e]*$/.test(targetText) && targetText.length > 0
    const m: Message = {
      method,
      target,
      headers: [
        hostHeader,
        ...connection,
        ...(accept === undefined ? [] : [["Accept", accept] as const]),
        ...(body === undefined ? [] : [["Content-Length", String(body.length)] as const])
      ],
      ...(body === undefined ? {} : { body: Buffer.from(body) })
    }
    return messageReq(
      m,
      `${show(method)} ${show(target, 100)}${body === undefined ? "" : ` body ${show(Buffer.from(body), 40)}`}${accept === undefined ? "" : ` Accept: ${accept}`}`,
      clean ? "answer" : "answer-or-wait"
    )
  })

/** A vote or a read with random, huge, many or malformed headers. */
export const headers: fc.Arbitrary<Req> = fc
  .tuple(
    fc.oneof(
      voteShapeArb.map((s) => ({ vote: s })),
      fc.tuple(readKindArb, prefixArb, anyPoll).map(([kind, prefix, poll]) => ({ kind, prefix, poll }))
    ),
    fc.array(validHeaderArb, { maxLength: 6 }),
    fc.option(oddHeadersArb, { nil: undefined, freq: 2 })
  )
  .map(([base, valid, odd]) => {
    const extra = [...valid, ...(odd?.headers ?? [])]
    const m =
      "vote" in base
        ? voteMessage("/api/v1", base.vote, JSON.stringify({ option_id: base.vote.option }), extra, false)
        : readMessage("GET", base.kind, base.prefix, base.poll, extra)
    const names = valid.map(([n]) => show(n, 20)).join(", ")
    return single(m, {
      label: `${methodOf(m)} ${show(m.target, 80)} with headers [${names}]${odd === undefined ? "" : ` + ${odd.what}`}`,
      expect: "answer"
    })
  })

const nest = (depth: number, open: string, close: string, inner: string) =>
  `${open.repeat(depth)}${inner}${close.repeat(depth)}`

export type DeepShape =
  | "option_id arrays"
  | "option_id arrays unclosed"
  | "top-level arrays"
  | "objects in an ignored field"
  | "voter_id objects"
  | "poll options arrays"
  | "option_id mixed"

export const deepJson = (d: number, shape: DeepShape): { text: string; what: string } => {
  switch (shape) {
    case "option_id arrays":
      return { text: `{"option_id":${nest(d, "[", "]", "")}}`, what: `option_id nested ${d} arrays deep` }
    case "option_id arrays unclosed":
      return { text: `{"option_id":${"[".repeat(d)}`, what: `option_id with ${d} unclosed arrays` }
    case "top-level arrays":
      return { text: nest(d, "[", "]", '"A"'), what: `${d} nested arrays` }
    case "objects in an ignored field":
      return {
        text: `{"x":${nest(d, '{"a":', "}", "1")},"option_id":"A"}`,
        what: `a vote with an extra field ${d} objects deep`
      }
    case "voter_id objects":
      return {
        text: `{"option_id":"A","voter_id":${nest(d, '{"v":', "}", "null")}}`,
        what: `voter_id nested ${d} objects deep`
      }
    case "poll options arrays":
      return {
        text: `{"question":"q","options":${nest(d, "[", "]", "")}}`,
        what: `poll options nested ${d} arrays deep`
      }
    case "option_id mixed":
      return {
        text: `{"option_id":${nest(d, '[{"a":', "}]", "0")}}`,
        what: `option_id nested ${d} array-object pairs deep`
      }
  }
}

export const jsonPost = (
  route: "vote" | "polls",
  poll: string,
  body: { text: string; what: string },
  prefix = "/api/v1"
): Req => {
  const target = route === "vote" ? `${prefix}/vote/${poll}` : `${prefix}/polls`
  return single(postJson(target, body.text), {
    label: `POST ${target} ${body.what === "" ? show(body.text, 120) : `${body.what} (${body.text.length} bytes)`}`
  })
}

/** Bodies of any JSON shape, and nesting thousands of levels deep, where the vote and poll routes parse them. */
export const jsonBodies: fc.Arbitrary<Req> = fc
  .tuple(
    fc.constantFrom("vote", "vote", "polls"),
    prefixArb,
    anyPoll,
    fc.oneof(
      fc
        .tuple(
          fc.oneof(fc.integer({ min: 1, max: 200 }), fc.integer({ min: 1000, max: 8000 })),
          fc.constantFrom<DeepShape>(
            "option_id arrays",
            "option_id arrays unclosed",
            "top-level arrays",
            "objects in an ignored field",
            "voter_id objects",
            "poll options arrays",
            "option_id mixed"
          )
        )
        .map(([d, shape]) => deepJson(d, shape)),
      fc.jsonValue({ maxDepth: 6 }).map((v) => ({ text: JSON.stringify(v) ?? "null", what: "" })),
      fc
        .record({
          option_id: fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.string({ maxLength: 70 }), charsetId),
          voter_id: fc.option(fc.jsonValue({ maxDepth: 2 }), { nil: undefined })
        })
        .map((v) => ({ text: JSON.stringify(v), what: "" })),
      fc
        .constantFrom(
          "",
          " ",
          "null",
          "{}",
          "[]",
          '"A"',
          "1e999",
          "{",
          '{"option_id":"A"',
          '{"option_id":"A"}}',
          '{"option_id":"A",}',
          "{'option_id':'A'}",
          '{"option_id":"A"}{"option_id":"B"}'
        )
        .map((text) => ({ text, what: "" }))
    )
  )
  .map(([route, prefix, poll, body]) => jsonPost(route === "polls" ? "polls" : "vote", poll, body, prefix))

/** Text in every encoding a client might send by mistake, or on purpose. */
export const ENCODED: ReadonlyArray<{ readonly body: Buffer; readonly what: string; readonly route?: "polls" }> = [
  { body: Buffer.concat([utf8('{"option_id":"A'), Buffer.from([0xff]), utf8('"}')]), what: "a 0xFF byte in option_id" },
  {
    body: Buffer.concat([utf8('{"option_id":"A'), Buffer.from([0xc0, 0xaf]), utf8('"}')]),
    what: "an overlong UTF-8 sequence"
  },
  {
    body: Buffer.concat([utf8('{"option_id":"A'), Buffer.from([0xed, 0xa0, 0x80]), utf8('"}')]),
    what: "a UTF-8-encoded surrogate"
  },
  {
    body: Buffer.concat([utf8('{"option_id":"A'), Buffer.from([0xe0, 0xa4]), utf8('"}')]),
    what: "a truncated UTF-8 sequence"
  },
  { body: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), utf8('{"option_id":"A"}')]), what: "a UTF-8 BOM" },
  {
    body: Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('{"option_id":"A"}', "utf16le")]),
    what: "UTF-16LE with a BOM"
  },
  {
    body: Buffer.concat([Buffer.from([0xfe, 0xff]), Buffer.from('{"option_id":"A"}', "utf16le").swap16()]),
    what: "UTF-16BE with a BOM"
  },
  { body: Buffer.from('{"option_id":"A"}', "utf16le"), what: "UTF-16LE without a BOM" },
  { body: utf8('{"option_id":"\\ud800"}'), what: "option_id a lone surrogate escape" },
  { body: utf8('{"option_id":"A\\udfff"}'), what: "option_id ending in a lone low surrogate escape" },
  { body: utf8('{"option_id":"A","voter_id":"\\ud800"}'), what: "voter_id a lone surrogate escape" },
  { body: utf8('{"option_id":"A\\u0000"}'), what: "a NUL escape in option_id" },
  { body: utf8('{"option_id":"é"}'), what: "a non-ASCII option_id" },
  { body: utf8('{"option_id":"😀"}'), what: "an emoji option_id" },
  { body: utf8('{"option\\u005fid":"A"}'), what: "an escaped property name (a valid vote)" },
  {
    body: utf8('{"question":"\\ud800","options":[{"id":"A","label":"a"},{"id":"B","label":"b"}]}'),
    what: "a poll question that is a lone surrogate",
    route: "polls"
  },
  {
    body: utf8('{"question":"q","options":[{"id":"A","label":"\\udc00"},{"id":"B","label":"b"}]}'),
    what: "a poll label that is a lone surrogate",
    route: "polls"
  },
  {
    body: Buffer.concat([
      utf8('{"question":"q'),
      Buffer.from([0xff, 0xfe]),
      utf8('","options":[{"id":"A","label":"a"},{"id":"B","label":"b"}]}')
    ]),
    what: "invalid UTF-8 in a poll question",
    route: "polls"
  }
]

export const encodedPost = (entry: (typeof ENCODED)[number], poll: string, type = "", prefix = "/api/v1"): Req => {
  const target = entry.route === "polls" ? `${prefix}/polls` : `${prefix}/vote/${poll}`
  const m: Message = {
    method: "POST",
    target,
    headers: [
      hostHeader,
      ["Content-Length", String(entry.body.length)],
      ...(type === "" ? [] : [["Content-Type", type] as const])
    ],
    body: entry.body
  }
  return single(m, { label: `POST ${target} with ${entry.what}${type === "" ? "" : ` (Content-Type: ${type})`}` })
}

export const encodings: fc.Arbitrary<Req> = fc
  .tuple(prefixArb, anyPoll, fromList(ENCODED), contentTypeArb)
  .map(([prefix, poll, entry, type]) => encodedPost(entry, poll, type, prefix))

export type Padding = "trailing spaces" | "leading spaces" | "an ignored field" | "a definition"

/** A valid vote (or definition) padded to `size` bytes: at most 16384 is taken, more is a 413. */
export const paddedReq = (shape: VoteShape, size: number, how: Padding, chunked = false, delivery?: Delivery): Req => {
  if (how === "a definition") {
    const base = {
      id: shape.poll,
      question: "q",
      options: [
        { id: "A", label: "a" },
        { id: "B", label: "b" }
      ]
    }
    const skeleton = JSON.stringify({ ...base, question: "" })
    const text = JSON.stringify({ ...base, question: "q".repeat(Math.max(1, size - Buffer.byteLength(skeleton))) })
    const bytes = Buffer.byteLength(text)
    // Within the limit, a question this long is refused by the schema (400); over it, the size decides (413).
    return single(postJson("/api/v1/polls", text), {
      label: `define POST /api/v1/polls with a ${bytes}-byte body`,
      intent: bytes > MAX_BODY_BYTES ? { _tag: "TooLarge" } : { _tag: "DefineInvalid" },
      delivery
    })
  }
  const bodyVoter = shape.cookie ? undefined : shape.voter
  const fields = JSON.stringify({
    option_id: shape.option,
    ...(bodyVoter === undefined ? {} : { voter_id: bodyVoter })
  })
  const text =
    how === "trailing spaces"
      ? fields.padEnd(size, " ")
      : how === "leading spaces"
        ? fields.padStart(size, " ")
        : `{"pad":"${"p".repeat(Math.max(0, size - `{"pad":"",${fields.slice(1)}`.length))}",${fields.slice(1)}`
  const m = voteMessage("/api/v1", shape, text, [], chunked)
  const bytes = Buffer.byteLength(text)
  return single(m, {
    label: `vote /api/v1/vote/${shape.poll} ${fields}${shape.cookie && shape.voter !== undefined ? ` cookie voter=${shape.voter}` : ""} padded with ${how} to ${bytes} bytes${chunked ? " chunked" : ""}`,
    intent: {
      _tag: "Vote",
      poll: shape.poll,
      option: shape.option,
      ...(shape.voter === undefined ? {} : { voter: shape.voter }),
      bytes
    },
    delivery
  })
}

export const sizes: fc.Arbitrary<Req> = fc
  .tuple(
    voteShapeArb,
    fc.oneof(
      fc.constantFrom(16_383, 16_384, 16_385, 16_386),
      fc.integer({ min: 16_000, max: 17_000 }),
      fc.constantFrom(65_536, 300_000)
    ),
    fc.constantFrom<Padding>("trailing spaces", "leading spaces", "an ignored field", "a definition"),
    fc.boolean(),
    deliveryArb
  )
  .map(([shape, size, how, chunked, delivery]) => paddedReq(shape, size, how, chunked, delivery))

export const FRAMINGS = [
  "duplicate Content-Length, same value",
  "duplicate Content-Length, different values",
  "Content-Length and Transfer-Encoding: chunked",
  "Transfer-Encoding: chunked and Content-Length",
  "Content-Length: +N",
  "Content-Length: 0xN",
  "Content-Length: N with spaces",
  "Content-Length: -1",
  "Content-Length: 1e1",
  "Content-Length: 99999999999999999999",
  "Content-Length: N,N",
  "Transfer-Encoding: gzip, chunked",
  "Transfer-Encoding: identity",
  "Transfer-Encoding: chunked, chunked",
  "Transfer-Encoding: Chunked",
  "Transfer-Encoding: xchunked",
  "two Transfer-Encoding headers",
  "chunk size not hex",
  "chunk size huge",
  "chunk with an extension",
  "chunk with trailers",
  "chunk data longer than its size",
  "no last chunk",
  "bare LF line endings",
  "HTTP/1.0 with a body",
  "HTTP/2.0",
  "HTTP/1.2",
  "HTTP/0.9 style request line",
  "lowercase http/1.1"
] as const

export type Framing = (typeof FRAMINGS)[number]

/** A vote framed in a way that is contradictory, not valid, or at the edge of what HTTP/1.1 allows. */
export const framedVote = (shape: VoteShape, what: Framing): Req => {
  const json = JSON.stringify({ option_id: shape.option })
  const body = utf8(json)
  const n = body.length
  const target = `/api/v1/vote/${shape.poll}`
  const h = (...hs: Array<readonly [string, string]>): Message => ({
    method: "POST",
    target,
    headers: [hostHeader, ...hs],
    body
  })
  const chunkedBody = chunk(body, 2)
  const te = (...hs: Array<readonly [string, string]>): Message => ({ ...h(...hs), body: chunkedBody })
  const rawChunks = (...parts: Array<Bytes>): Buffer =>
    encode({ ...h(["Transfer-Encoding", "chunked"]), body: Buffer.concat(parts.map(buf)) })
  const bytesOf = (): Buffer => {
    switch (what) {
      case "duplicate Content-Length, same value":
        return encode(h(["Content-Length", String(n)], ["Content-Length", String(n)]))
      case "duplicate Content-Length, different values":
        return encode(h(["Content-Length", String(n)], ["Content-Length", String(n + 1)]))
      case "Content-Length and Transfer-Encoding: chunked":
        return encode(te(["Content-Length", String(n)], ["Transfer-Encoding", "chunked"]))
      case "Transfer-Encoding: chunked and Content-Length":
        return encode(te(["Transfer-Encoding", "chunked"], ["Content-Length", String(chunkedBody.length)]))
      case "Content-Length: +N":
        return encode(h(["Content-Length", `+${n}`]))
      case "Content-Length: 0xN":
        return encode(h(["Content-Length", `0x${n.toString(16)}`]))
      case "Content-Length: N with spaces":
        return encode(h(["Content-Length", `  ${n}  `]))
      case "Content-Length: -1":
        return encode(h(["Content-Length", "-1"]))
      case "Content-Length: 1e1":
        return encode(h(["Content-Length", "1e1"]))
      case "Content-Length: 99999999999999999999":
        return encode(h(["Content-Length", "99999999999999999999"]))
      case "Content-Length: N,N":
        return encode(h(["Content-Length", `${n},${n}`]))
      case "Transfer-Encoding: gzip, chunked":
        return encode(te(["Transfer-Encoding", "gzip, chunked"]))
      case "Transfer-Encoding: identity":
        return encode(h(["Transfer-Encoding", "identity"]))
      case "Transfer-Encoding: chunked, chunked":
        return encode(te(["Transfer-Encoding", "chunked, chunked"]))
      case "Transfer-Encoding: Chunked":
        return encode(te(["Transfer-Encoding", "Chunked"]))
      case "Transfer-Encoding: xchunked":
        return encode(te(["Transfer-Encoding", "xchunked"]))
      case "two Transfer-Encoding headers":
        return encode(te(["Transfer-Encoding", "chunked"], ["Transfer-Encoding", "chunked"]))
      case "chunk size not hex":
        return rawChunks("zz\r\n", body, "\r\n0\r\n\r\n")
      case "chunk size huge":
        return rawChunks("ffffffffffffffffff\r\n", body, "\r\n0\r\n\r\n")
      case "chunk with an extension":
        return rawChunks(`${n.toString(16)};name="v"\r\n`, body, "\r\n0\r\n\r\n")
      case "chunk with trailers":
        return rawChunks(`${n.toString(16)}\r\n`, body, "\r\n0\r\nX-T: 1\r\n\r\n")
      case "chunk data longer than its size":
        return rawChunks("2\r\n", body, "\r\n0\r\n\r\n")
      case "no last chunk":
        return rawChunks(`${n.toString(16)}\r\n`, body, "\r\n")
      case "bare LF line endings":
        return Buffer.concat([buf(`POST ${target} HTTP/1.1\nHost: 127.0.0.1\nContent-Length: ${n}\n\n`), body])
      case "HTTP/1.0 with a body":
        return encode({ ...h(["Content-Length", String(n)]), version: "HTTP/1.0" })
      case "HTTP/2.0":
        return encode({ ...h(["Content-Length", String(n)]), version: "HTTP/2.0" })
      case "HTTP/1.2":
        return encode({ ...h(["Content-Length", String(n)]), version: "HTTP/1.2" })
      case "HTTP/0.9 style request line":
        return buf(`GET /api/v1/results/${shape.poll}\r\n\r\n`)
      case "lowercase http/1.1":
        return encode({ ...h(["Content-Length", String(n)]), version: "http/1.1" })
    }
  }
  const bytes = bytesOf()
  // Only a chunked body without its last chunk is incomplete; every other message here is whole and owed an answer.
  const incomplete = what === "no last chunk"
  return req({
    label: `vote ${target} ${json} with ${what}`,
    plan: () => ({
      steps: [Raw.write(bytes)],
      methods: ["POST"],
      quietMs: 100,
      ...(incomplete ? { patienceMs: PATIENCE_MS } : {}),
      timeoutMs: TIMEOUT_MS
    }),
    intents: [ANY],
    expect: incomplete ? "answer-or-wait" : "answer"
  })
}

/** A vote whose body is followed on the connection by `rest`: garbage, or a whole second request. */
export const followedBy = (shape: VoteShape, rest: Buffer | VoteShape, what: string): Req => {
  const voteOf = (v: VoteShape) => {
    const json = JSON.stringify({ option_id: v.option })
    const intent: Intent = { _tag: "Vote", poll: v.poll, option: v.option, bytes: json.length }
    return { bytes: encode(voteMessage("/api/v1", { ...v, voter: undefined }, json, [], false)), json, intent }
  }
  const first = voteOf(shape)
  const second = Buffer.isBuffer(rest) ? undefined : voteOf(rest)
  return req({
    label: `vote /api/v1/vote/${shape.poll} ${first.json} followed on the connection by ${what}`,
    plan: () => ({
      steps: [Raw.write(Buffer.concat([first.bytes, second?.bytes ?? (rest as Buffer)]))],
      methods: ["POST", "POST"],
      // A second vote is owed its answer (it may be counted); bytes that are no request, at most an error.
      ...(second === undefined ? { quietMs: 150, patienceMs: PATIENCE_MS } : { responses: 2 }),
      timeoutMs: TIMEOUT_MS
    }),
    // The first answer on a connection belongs to its first request, whatever follows it.
    intents: second === undefined ? [first.intent] : [first.intent, second.intent],
    expect: "answer"
  })
}

/** A Content-Length `delta` bytes off the body's length. */
export const wrongLength = (shape: VoteShape, delta: number, route: "vote" | "results"): Req => {
  const json = JSON.stringify({ option_id: shape.option })
  const body = utf8(json)
  const target = route === "vote" ? `/api/v1/vote/${shape.poll}` : `/api/v1/results/${shape.poll}`
  const method = route === "vote" ? "POST" : "GET"
  const m: Message = {
    method,
    target,
    headers: [hostHeader, ["Content-Length", String(Math.max(0, body.length + delta))]],
    body
  }
  // A body shorter than its Content-Length may rightly be waited for; a longer one is a request and then another.
  const short = delta > 0
  return req({
    label: `${method} ${target} ${json} with Content-Length ${delta > 0 ? `${delta} more` : `${-delta} less`} than the body`,
    plan: () => ({
      steps: [Raw.write(encode(m))],
      methods: [method, "POST"],
      quietMs: 150,
      ...(short ? { patienceMs: PATIENCE_MS } : {}),
      timeoutMs: TIMEOUT_MS
    }),
    intents: [ANY],
    expect: short ? "answer-or-wait" : "answer"
  })
}

type PipelineItem =
  | { readonly vote: VoteShape }
  | { readonly kind: "results" | "poll" | "health" | "root"; readonly prefix: string; readonly poll: string }

/** Several complete requests in one write (or cut anywhere): each answered, in order. */
export const pipelined = (items: ReadonlyArray<PipelineItem>, delivery?: Delivery): Req => {
  // A read of a poll this pipeline votes on may see the votes or not (the server may work on both at once).
  const voted = new Set(items.flatMap((i) => ("vote" in i ? [i.vote.poll] : [])))
  const kept = items.filter((i) => "vote" in i || !voted.has(i.poll))
  const messages = kept.map((i) => {
    if (!("vote" in i))
      return { m: readMessage("GET", i.kind, i.prefix, i.poll, []), intent: readIntent(i.kind, i.poll) }
    const json = JSON.stringify({ option_id: i.vote.option })
    const intent: Intent = { _tag: "Vote", poll: i.vote.poll, option: i.vote.option, bytes: json.length }
    return { m: voteMessage("/api/v1", { ...i.vote, voter: undefined }, json, [], false), intent }
  })
  const bytes = Buffer.concat(messages.map(({ m }) => encode(m)))
  return req({
    label: `pipelined: ${messages
      .map(
        ({ m }) => `${methodOf(m)} ${show(m.target, 60)}${m.body === undefined ? "" : ` ${m.body.toString("utf8")}`}`
      )
      .join(" | ")}${deliveryLabel(delivery)}`,
    plan: () => ({
      steps: stepsOf(bytes, delivery),
      methods: messages.map(({ m }) => methodOf(m)),
      responses: messages.length,
      timeoutMs: TIMEOUT_MS
    }),
    intents: messages.map(({ intent }) => intent),
    expect: "answer"
  })
}

export const framing: fc.Arbitrary<Req> = fc.oneof(
  fc.tuple(voteShapeArb, fromList(FRAMINGS)).map(([shape, what]) => framedVote(shape, what)),
  fc
    .tuple(
      voteShapeArb,
      fc.oneof(
        fc
          .constantFrom("xyz", "\r\n", "\r\n\r\n", "G", "GET / HTTP/1.1\r\n", "\0\0\0")
          .map((s) => ({ rest: buf(s) as Buffer | VoteShape, what: `"${show(s)}"` })),
        voteShapeArb.map((s) => ({ rest: s as Buffer | VoteShape, what: `a second vote ${s.poll}/${s.option}` }))
      )
    )
    .map(([shape, { rest, what }]) => followedBy(shape, rest, what)),
  fc
    .tuple(
      voteShapeArb,
      fc.integer({ min: -12, max: 40 }).filter((d) => d !== 0),
      fc.constantFrom<"vote" | "results">("vote", "results")
    )
    .map(([shape, delta, route]) => wrongLength(shape, delta, route)),
  fc
    .tuple(
      fc.array(
        fc.oneof(
          voteShapeArb.map((vote): PipelineItem => ({ vote })),
          fc
            .tuple(
              fc.constantFrom<"results" | "poll" | "health" | "root">("results", "poll", "health", "root"),
              prefixArb,
              poolPoll
            )
            .map(([kind, prefix, poll]): PipelineItem => ({ kind, prefix, poll }))
        ),
        { minLength: 2, maxLength: 4 }
      ),
      deliveryArb
    )
    .map(([items, delivery]) => pipelined(items, delivery))
)

/** Content-Length: 100, `sent` bytes of the body, then the client closes (at once, or after holding it `holdMs`). */
export const halfSent = (shape: VoteShape, sent: number, holdMs?: number): Req => {
  const full = utf8(JSON.stringify({ option_id: shape.option }).padEnd(100, " "))
  const head = encode({
    method: "POST",
    target: `/api/v1/vote/${shape.poll}`,
    headers: [hostHeader, ["Content-Length", "100"]]
  })
  return req({
    label: `vote /api/v1/vote/${shape.poll} with Content-Length: 100 and ${sent} bytes sent, then the client closes${
      holdMs === undefined ? "" : ` after ${holdMs} ms`
    }`,
    plan: () => ({
      steps: [
        Raw.write(Buffer.concat([head, full.subarray(0, sent)])),
        ...(holdMs === undefined ? [] : [Raw.pause(holdMs)]),
        Raw.hangUp
      ],
      methods: ["POST"],
      timeoutMs: TIMEOUT_MS
    }),
    intents: [ANY],
    expect: "client-hangs-up"
  })
}

/** The headers cut off at `at` (a fraction), then the client closes. */
export const cutHeaders = (shape: VoteShape, at: number): Req => {
  const bytes = encode(voteMessage("/api/v1", shape, JSON.stringify({ option_id: shape.option }), [], false))
  const cut = Math.max(1, Math.floor(bytes.indexOf("\r\n\r\n") * at))
  return req({
    label: `vote /api/v1/vote/${shape.poll} cut off after ${cut} bytes of its headers, then the client closes`,
    plan: () => ({
      steps: [Raw.write(bytes.subarray(0, cut)), Raw.pause(20), Raw.hangUp],
      methods: ["POST"],
      timeoutMs: TIMEOUT_MS
    }),
    intents: [ANY],
    expect: "client-hangs-up"
  })
}

/** A complete vote sent slowly: the server must wait for it and answer it. */
export const slowVote = (shape: VoteShape, delivery: Delivery, expectContinue: boolean): Req => {
  const bodyVoter = shape.cookie ? undefined : shape.voter
  const json = JSON.stringify({ option_id: shape.option, ...(bodyVoter === undefined ? {} : { voter_id: bodyVoter }) })
  const m = voteMessage("/api/v1", shape, json, expectContinue ? [["Expect", "100-continue"]] : [], false)
  return single(m, {
    label: `vote /api/v1/vote/${shape.poll} ${json}${shape.cookie && shape.voter !== undefined ? ` cookie voter=${shape.voter}` : ""}${
      expectContinue ? " with Expect: 100-continue" : ""
    } sent slowly (${delivery.pauseMs} ms pauses)`,
    intent: {
      _tag: "Vote",
      poll: shape.poll,
      option: shape.option,
      ...(shape.voter === undefined ? {} : { voter: shape.voter }),
      bytes: json.length
    },
    delivery
  })
}

export const slowBodies: fc.Arbitrary<Req> = fc.oneof(
  fc
    .tuple(
      voteShapeArb,
      fc.integer({ min: 0, max: 99 }),
      fc.option(fc.integer({ min: 50, max: 900 }), { nil: undefined })
    )
    .map(([shape, sent, holdMs]) => halfSent(shape, sent, holdMs)),
  fc.tuple(voteShapeArb, fc.double({ min: 0.05, max: 0.95, noNaN: true })).map(([shape, at]) => cutHeaders(shape, at)),
  fc
    .tuple(
      voteShapeArb,
      fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 2, maxLength: 5 }),
      fc.integer({ min: 20, max: 150 }),
      fc.boolean()
    )
    .map(([shape, cuts, pauseMs, expectContinue]) => slowVote(shape, { cuts, pauseMs }, expectContinue))
)

export const CLASSES = {
  "methods and paths": methodsAndPaths,
  headers,
  framing,
  "slow and half-sent bodies": slowBodies,
  "JSON of any shape and depth": jsonBodies,
  encodings,
  "sizes around 16 KiB": sizes,
  "HEAD on every route": headRequest,
  "valid traffic, Object.prototype names as ids": validTraffic
} as const

export type ClassName = keyof typeof CLASSES

const vote = (poll: string, option: string, voter?: string): VoteShape => ({ poll, option, voter, cookie: false })

/** Hand-picked cases, each run (as a run of its own) before the random ones, so every run of the suite tries them. */
export const EXAMPLES: Readonly<Record<ClassName, ReadonlyArray<ReadonlyArray<Req>>>> = {
  "methods and paths": [
    [messageReq({ method: "get", target: "/", headers: [hostHeader] }, "get / (a lowercase method)")],
    [
      messageReq(
        { method: "FOO", target: "/api/v1/health", headers: [hostHeader] },
        "FOO /api/v1/health (an unknown method)"
      )
    ],
    [
      messageReq(
        { method: "GET", target: "/api/v1/results/%E0%A4%A", headers: [hostHeader] },
        "GET /api/v1/results/%E0%A4%A"
      )
    ],
    [voteReq(vote("..", "A")), readReq("results", "..")],
    [
      messageReq(
        { method: "GET", target: `/api/v1/results/${"a".repeat(20_000)}`, headers: [hostHeader] },
        "GET a 20000-byte path"
      )
    ],
    [messageReq({ method: "CONNECT", target: "127.0.0.1:80", headers: [hostHeader] }, "CONNECT 127.0.0.1:80")],
    [listReq("?status=open&__proto__=1&constructor=x&limit=100", { status: "open", limit: 100 })],
    [listReq("?limit=1&limit=1", { invalid: "limit twice" }), listReq("?cursor=%zz", { invalid: "cursor" })],
    [listReq(`?cursor=${"a".repeat(5000)}&status=all`, { invalid: "a long cursor" })],
    [readReq("json", "__proto__"), readReq("csv", "constructor"), readReq("json", "hasOwnProperty", "")],
    [messageReq({ method: "GET", target: "/api/v1/polls/%zz/results.csv", headers: [hostHeader] }, "GET a CSV of %zz")],
    [messageReq({ method: "DELETE", target: "/docs", headers: [hostHeader] }, "DELETE /docs")],
    [
      messageReq(
        {
          method: "POST",
          target: "/api/v1/openapi.json",
          headers: [hostHeader, ["Content-Length", "2"]],
          body: utf8("{}")
        },
        "POST /api/v1/openapi.json with a body"
      )
    ],
    [
      readReq("openapi", ""),
      readReq("docs", "", ""),
      readReq("docs.js", ""),
      readReq("docs.css", ""),
      readReq("metrics", "")
    ]
  ],
  headers: [
    [
      messageReq(
        { method: "GET", target: "/", headers: [hostHeader, ["X-Big", "h".repeat(20_000)]] },
        "GET / with a 20000-byte header"
      )
    ],
    [messageReq({ method: "GET", target: "/", headers: [] }, "GET / without a Host header")],
    [
      messageReq(
        { method: "GET", target: "/", headers: [hostHeader, ["Expect", "the-unexpected"]] },
        "GET / with Expect: the-unexpected"
      )
    ]
  ],
  framing: [
    [framedVote(vote("p1", "A"), "duplicate Content-Length, different values")],
    [framedVote(vote("p1", "A"), "Content-Length and Transfer-Encoding: chunked")],
    [followedBy(vote("p1", "A"), buf("xyz"), '"xyz"'), readReq("results", "p1")],
    [wrongLength(vote("p1", "A"), 5, "vote"), readReq("results", "p1")]
  ],
  "slow and half-sent bodies": [
    [halfSent(vote("p1", "A"), 17), readReq("results", "p1")],
    [halfSent(vote("p1", "A"), 40, 500), readReq("results", "p1")]
  ],
  "JSON of any shape and depth": [
    [jsonPost("vote", "p1", deepJson(5000, "option_id arrays"))],
    [jsonPost("vote", "p1", deepJson(5000, "option_id arrays unclosed"))],
    [jsonPost("polls", "p1", deepJson(5000, "poll options arrays"))]
  ],
  encodings: [
    [
      encodedPost(
        ENCODED.find((e) => e.what === "option_id a lone surrogate escape")!,
        "p1"
      )
    ],
    [encodedPost(ENCODED[0]!, "p1", "application/json")],
    [
      encodedPost(
        ENCODED.find((e) => e.what === "UTF-16LE with a BOM")!,
        "p1",
        "application/json; charset=utf-16"
      )
    ]
  ],
  "sizes around 16 KiB": [
    [paddedReq(vote("p1", "A"), 16_383, "trailing spaces")],
    [paddedReq(vote("p1", "A"), 16_384, "trailing spaces")],
    [paddedReq(vote("p1", "A"), 16_385, "trailing spaces")]
  ],
  "HEAD on every route": [
    [headReq("root", "", "")],
    [headReq("results", "p1")],
    [headReq("stream", "p1")],
    [headReq("list", "")],
    [headReq("json", "p1")],
    [headReq("csv", "__proto__", "")],
    [headReq("metrics", "")],
    [headReq("openapi", "")],
    [headReq("docs", "", "")],
    [headReq("docs.js", "")],
    [headReq("docs.css", "")]
  ],
  "valid traffic, Object.prototype names as ids": [
    [...PROTOTYPE_NAMES.map((name) => voteReq(vote(FRESH[0]!, name))), readReq("results", FRESH[0]!)],
    [
      ...PROTOTYPE_NAMES.map((name) => voteReq(vote(name, name))),
      ...PROTOTYPE_NAMES.map((name) => readReq("results", name))
    ],
    // A fresh poll, so the definition is new whatever ran before: a one-vote poll with prototype-named options.
    [
      defineReq({
        id: FRESH[0]!,
        question: "q",
        options: [
          { id: "toString", label: "a" },
          { id: "__proto__", label: "b" },
          { id: "constructor", label: "c" }
        ],
        one_vote_per_voter: true
      }),
      voteReq(vote(FRESH[0]!, "__proto__", "hasOwnProperty")),
      voteReq(vote(FRESH[0]!, "toString", "hasOwnProperty")),
      voteReq(vote(FRESH[0]!, "toString", "valueOf")),
      voteReq({ poll: FRESH[0]!, option: "constructor", voter: "__proto__", cookie: true }),
      readReq("results", FRESH[0]!),
      readReq("poll", FRESH[0]!),
      readReq("stream", FRESH[0]!),
      closeReq(FRESH[0]!, "key"),
      voteReq(vote(FRESH[0]!, "toString", "constructor")),
      readReq("results", FRESH[0]!),
      readReq("json", FRESH[0]!),
      readReq("csv", FRESH[0]!),
      listReq("?status=closed&limit=100", { status: "closed", limit: 100 }),
      listReq("?status=open", { status: "open", limit: 20 })
    ],
    // A prototype-named poll id defined (409 if an earlier run defined it: the contract's answer either way).
    [
      defineReq({
        id: "__proto__",
        question: "q",
        options: [
          { id: "valueOf", label: "a" },
          { id: "B", label: "b" }
        ]
      }),
      voteReq(vote("__proto__", "valueOf")),
      readReq("results", "__proto__"),
      readReq("poll", "__proto__")
    ]
  ]
}
