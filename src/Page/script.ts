import type { AlreadyVoted, BufferFull, PollClosed, StoreUnavailable, UnknownOption, VoterRequired } from "../Domain.js"

/**
 * The poll page's script: draws the results stream as bars and sends a vote per click. Bundled into one classic
 * script inlined by src/Page.ts; it talks to its own origin only. Data is set with `textContent`, never parsed as HTML.
 */

/** The refusals the page explains in its own words; their codes are the ones the server's error classes carry. */
type Explained = AlreadyVoted | PollClosed | UnknownOption | VoterRequired | StoreUnavailable | BufferFull
type Code = Explained["code"]

const MESSAGES: { readonly [C in Code]: string } = {
  already_voted: "You have already voted in this poll.",
  poll_closed: "This poll is closed: no more votes are taken.",
  unknown_option: "That option is not part of this poll.",
  voter_required: "This poll allows one vote per person: allow cookies for this site and reload the page.",
  store_unavailable: "The poll is briefly unavailable. Please try again in a moment.",
  buffer_full: "The poll is very busy. Please try again in a moment."
}

const isCode = (u: unknown): u is Code => typeof u === "string" && Object.hasOwn(MESSAGES, u)

interface OptionView {
  readonly id: string
  readonly label: string
  readonly votes: number
}

/** A `results` event: a defined poll's definition and counts, or an ad-hoc poll's counts alone. */
interface Results {
  readonly question?: unknown
  readonly options?: ReadonlyArray<OptionView>
  readonly results?: Readonly<Record<string, number>>
  readonly one_vote_per_voter?: unknown
  readonly closes_at?: unknown
  readonly closed?: unknown
}

interface Row {
  readonly item: HTMLLIElement
  readonly button: HTMLButtonElement
  readonly mine: HTMLSpanElement
  readonly fill: HTMLDivElement
  readonly count: HTMLSpanElement
  readonly unit: HTMLSpanElement
  readonly pct: HTMLSpanElement
}

/** The document's elements by id; the markup is src/Page.ts's, so a missing one is a bug there. */
const byId = <E extends HTMLElement>(id: string) => {
  const element = document.getElementById(id)
  if (element === null) throw new Error(`the page has no #${id}`)
  return element as E
}

const pollId = document.querySelector("main")?.dataset["pollId"] ?? ""
const question = byId("question")
const list = byId<HTMLOListElement>("options")
const empty = byId("empty")
const total = byId("total")
const closesAt = byId("closes-at")
const banner = byId("closed")
const live = byId("live")
const status = byId("status")
const PALETTE = ["#4263eb", "#f76707", "#0ca678", "#d6336c", "#7048e8", "#e8a100", "#1098ad", "#74b816"]
const number = new Intl.NumberFormat()
const votes = (n: number) => number.format(n) + (n === 1 ? " vote" : " votes")
const storageKey = "livepoll:voted:" + pollId

let rows = new Map<string, Row>()
let shape = ""
let closed = false
let sending = false
let onePerVoter = false
let closeTimer: ReturnType<typeof setTimeout> | undefined
let myVote: string | null = null
try {
  myVote = localStorage.getItem(storageKey)
} catch {
  myVote = null
}

let sayTimer: ReturnType<typeof setTimeout> | undefined
const say = (text: string, kind?: "ok" | "error") => {
  clearTimeout(sayTimer)
  status.className = "status" + (kind ? " " + kind : "")
  // Cleared first so the same message said twice is announced twice.
  status.textContent = ""
  sayTimer = setTimeout(() => {
    status.textContent = text
  }, 20)
}

const setLive = (state: "live" | "closed" | "offline", text: string) => {
  live.dataset["state"] = state
  live.textContent = text
}

const optionsOf = (data: Results): ReadonlyArray<OptionView> => {
  if (Array.isArray(data.options)) return data.options
  const results = data.results ?? {}
  return Object.keys(results).map((id) => ({ id, label: id, votes: results[id] ?? 0 }))
}

const refreshButtons = () => {
  const locked = onePerVoter && myVote !== null
  for (const [id, row] of rows) {
    row.button.disabled = closed
    if (locked || sending) row.button.setAttribute("aria-disabled", "true")
    else row.button.removeAttribute("aria-disabled")
    const mine = onePerVoter && myVote === id
    row.item.classList.toggle("chosen", mine)
    // In the button only when true, so it is part of the button's name only then.
    if (mine && !row.mine.isConnected) row.button.append(row.mine)
    if (!mine && row.mine.isConnected) row.mine.remove()
  }
}

const element = <K extends keyof HTMLElementTagNameMap>(tag: K, className: string) => {
  const created = document.createElement(tag)
  created.className = className
  return created
}

const build = (options: ReadonlyArray<OptionView>) => {
  rows = new Map()
  const items = options.map((option, index) => {
    const item = element("li", "option")
    item.dataset["option"] = option.id
    item.style.setProperty("--c", PALETTE[index % PALETTE.length] ?? "")
    const button = element("button", "vote")
    button.type = "button"
    const label = element("span", "label")
    label.textContent = option.label
    const mine = element("span", "mine")
    mine.textContent = "Your vote"
    button.append(label)
    const figuresId = "figures-" + index
    button.setAttribute("aria-describedby", figuresId)
    button.addEventListener("click", () => void vote(option))
    const track = element("div", "track")
    track.setAttribute("aria-hidden", "true")
    const fill = element("div", "fill")
    track.append(fill)
    const figures = element("p", "figures")
    figures.id = figuresId
    const count = element("span", "count")
    const unit = element("span", "visually-hidden")
    const pct = element("span", "pct")
    figures.append(count, unit, pct)
    item.append(button, track, figures)
    rows.set(option.id, { item, button, mine, fill, count, unit, pct })
    return item
  })
  list.replaceChildren(...items)
}

const markClosed = () => {
  closed = true
  banner.hidden = false
  setLive("closed", "Final results")
  refreshButtons()
}

const draw = (data: Results) => {
  if (typeof data.question === "string") {
    question.textContent = data.question
    document.title = data.question + " · livepoll"
  }
  onePerVoter = data.one_vote_per_voter === true
  const options = optionsOf(data)
  const nextShape = JSON.stringify(options.map((o) => [o.id, o.label]))
  // Rows are rebuilt only when the options change, so a focused button keeps its focus across updates.
  if (nextShape !== shape) {
    shape = nextShape
    build(options)
  }
  empty.hidden = options.length > 0
  const sum = options.reduce((n, o) => n + o.votes, 0)
  const most = options.reduce((n, o) => Math.max(n, o.votes), 0)
  for (const option of options) {
    const row = rows.get(option.id)
    if (row === undefined) continue
    const share = sum === 0 ? 0 : (option.votes * 100) / sum
    row.fill.style.width = share.toFixed(2) + "%"
    row.count.textContent = number.format(option.votes)
    row.unit.textContent = option.votes === 1 ? " vote, " : " votes, "
    row.pct.textContent = Math.round(share) + "%"
    row.item.classList.toggle("leading", most > 0 && option.votes === most)
  }
  total.textContent = votes(sum)
  clearTimeout(closeTimer)
  let over = data.closed === true
  if (typeof data.closes_at === "string") {
    const at = Date.parse(data.closes_at)
    closesAt.hidden = false
    closesAt.textContent =
      (at > Date.now() ? "Closes at " : "Closed at ") +
      new Date(at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    // Past the longest delay setTimeout takes, the timer would fire at once.
    if (!closed && at > Date.now() && at - Date.now() < 2147483647) closeTimer = setTimeout(markClosed, at - Date.now())
    if (at <= Date.now()) over = true
  } else closesAt.hidden = true
  if (over) markClosed()
  else if (closed) {
    closed = false
    banner.hidden = true
  }
  if (!closed) setLive("live", "Live")
  refreshButtons()
}

const vote = async (option: OptionView) => {
  if (closed || sending) return
  if (onePerVoter && myVote !== null) return say(MESSAGES.already_voted, "error")
  sending = true
  refreshButtons()
  say("Sending your vote…")
  try {
    const response = await fetch("/api/v1/vote/" + encodeURIComponent(pollId), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ option_id: option.id }),
      credentials: "same-origin"
    })
    let body: { readonly error?: unknown } = {}
    try {
      body = await response.json()
    } catch {
      body = {}
    }
    if (response.ok) {
      say("Vote counted for " + option.label + ".", "ok")
      if (onePerVoter) remember(option.id)
    } else {
      const code = isCode(body.error) ? body.error : undefined
      say(
        code !== undefined ? MESSAGES[code] : "Your vote was not counted (" + response.status + "). Please try again.",
        "error"
      )
      if (code === "poll_closed") markClosed()
      if (code === "already_voted") remember("")
    }
  } catch {
    say("Could not reach the server. Check your connection and try again.", "error")
  } finally {
    sending = false
    refreshButtons()
  }
}

const remember = (optionId: string) => {
  myVote = optionId
  try {
    localStorage.setItem(storageKey, optionId)
  } catch {
    // Private mode: kept for this page only.
  }
}

let retryMs = 1000
const connect = () => {
  const source = new EventSource("/api/v1/polls/" + encodeURIComponent(pollId) + "/stream")
  source.addEventListener("results", (event) => {
    retryMs = 1000
    draw(JSON.parse(event.data) as Results)
  })
  source.addEventListener("error", () => {
    if (!closed) setLive("offline", "Reconnecting…")
    // The browser retries by itself unless the server refused the stream; then retry here, backing off.
    if (source.readyState === EventSource.CLOSED) {
      source.close()
      setTimeout(connect, retryMs)
      retryMs = Math.min(retryMs * 2, 15000)
    }
  })
}
connect()
