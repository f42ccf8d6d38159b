import { createHash } from "node:crypto"

/**
 * The live results page of one poll: the question, a large button per option, and a horizontal bar chart fed by the
 * results stream. One self-contained document: inline CSS and script, system fonts, no requests but the API's own.
 * Everything that comes from data is set with `textContent`, never parsed as HTML.
 */

const STYLE = `
:root {
  color-scheme: light dark;
  --bg: #f4f5f9;
  --fg: #161a26;
  --muted: #5a6072;
  --card: #ffffff;
  --line: #dde0ea;
  --track: #e9ebf2;
  --focus: #f08c00;
  --ok: #2b8a3e;
  --error: #c92a2a;
  --shadow: 0 1px 2px rgb(22 26 38 / 0.06), 0 4px 16px rgb(22 26 38 / 0.06);
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Helvetica Neue", Arial, sans-serif;
  font-size: clamp(16px, 0.7vw + 10px, 32px);
  line-height: 1.35;
  background: var(--bg);
  color: var(--fg);
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #0f121a;
    --fg: #eef1f7;
    --muted: #a4abbd;
    --card: #191d29;
    --line: #2b3142;
    --track: #262b39;
    --ok: #69db7c;
    --error: #ff8787;
    --shadow: none;
  }
}
* { box-sizing: border-box; }
body { margin: 0; min-height: 100vh; display: flex; flex-direction: column; }
main { width: 100%; max-width: 72rem; margin: 0 auto; padding: 1.25rem 1rem 2rem; flex: 1; }
header { margin-bottom: 1.25rem; }
.meta { display: flex; flex-wrap: wrap; align-items: center; gap: 0.5rem 1rem; margin: 0 0 0.6rem; color: var(--muted); font-size: 0.9rem; }
.brand { font-weight: 700; letter-spacing: 0.02em; color: var(--fg); }
.live { display: inline-flex; align-items: center; gap: 0.4em; }
.live::before { content: ""; width: 0.6em; height: 0.6em; border-radius: 50%; background: var(--muted); }
.live[data-state="live"]::before { background: #2f9e44; box-shadow: 0 0 0 0.2em rgb(47 158 68 / 0.25); }
.live[data-state="closed"]::before { background: var(--error); }
h1 { font-size: clamp(1.6rem, 2.6vw + 0.8rem, 3.4rem); line-height: 1.15; margin: 0; overflow-wrap: anywhere; letter-spacing: -0.01em; }
.summary { margin: 0.6rem 0 0; font-size: 1.05rem; color: var(--muted); }
.summary strong { color: var(--fg); font-variant-numeric: tabular-nums; }
.banner { margin: 1rem 0 0; padding: 0.7rem 1rem; border-radius: 0.75rem; background: var(--card); border: 2px solid var(--error); color: var(--error); font-weight: 650; }
.banner[hidden], .empty[hidden] { display: none; }
ol { list-style: none; margin: 0; padding: 0; display: grid; gap: 0.75rem; }
.option {
  --c: #4263eb;
  display: grid;
  grid-template-columns: 1fr auto;
  grid-template-areas: "vote vote" "bar figures";
  align-items: center;
  gap: 0.5rem 0.75rem;
  padding: 0.6rem;
  background: var(--card);
  border: 1px solid var(--line);
  border-radius: 1rem;
  box-shadow: var(--shadow);
}
.vote {
  grid-area: vote;
  display: flex;
  align-items: center;
  gap: 0.7rem;
  width: 100%;
  min-height: 3rem;
  padding: 0.5rem 0.9rem;
  font: inherit;
  font-size: 1.2rem;
  font-weight: 650;
  text-align: left;
  color: var(--fg);
  background: color-mix(in srgb, var(--c) 9%, var(--card));
  border: 2px solid color-mix(in srgb, var(--c) 55%, var(--card));
  border-radius: 0.75rem;
  cursor: pointer;
  overflow-wrap: anywhere;
  transition: background-color 0.15s, border-color 0.15s, transform 0.1s;
}
.vote::before { content: ""; flex: none; width: 0.85rem; height: 0.85rem; border-radius: 50%; background: var(--c); }
.vote:hover:not(:disabled):not([aria-disabled="true"]) { background: color-mix(in srgb, var(--c) 18%, var(--card)); border-color: var(--c); }
.vote:active:not(:disabled):not([aria-disabled="true"]) { transform: scale(0.99); }
.vote:focus-visible { outline: 0.2rem solid var(--focus); outline-offset: 0.2rem; }
.vote:disabled, .vote[aria-disabled="true"] { cursor: not-allowed; opacity: 0.7; }
.vote .mine { margin-left: auto; flex: none; white-space: nowrap; font-size: 0.75em; font-weight: 650; padding: 0.2em 0.7em; border-radius: 999px; background: var(--c); color: #fff; }
.option.chosen .vote { opacity: 1; border-color: var(--c); }
.track { grid-area: bar; height: 0.85rem; border-radius: 999px; background: var(--track); overflow: hidden; }
.fill { height: 100%; width: 0; border-radius: inherit; background: var(--c); transition: width 0.45s ease-out; }
.figures { grid-area: figures; display: flex; align-items: baseline; gap: 0.5rem; justify-content: flex-end; min-width: 5.5rem; margin: 0; font-variant-numeric: tabular-nums; white-space: nowrap; }
.count { font-size: 1.2rem; font-weight: 700; }
.pct { color: var(--muted); min-width: 3.2ch; text-align: right; }
.leading .count { color: var(--c); }
.empty { padding: 1.5rem; text-align: center; color: var(--muted); background: var(--card); border: 1px dashed var(--line); border-radius: 1rem; }
.status {
  position: sticky;
  bottom: 0.75rem;
  margin: 1rem 0 0;
  padding: 0.6rem 1rem;
  border-radius: 0.75rem;
  font-weight: 650;
  background: var(--card);
  border: 2px solid var(--line);
  box-shadow: var(--shadow);
}
.status:empty { padding: 0; border: 0; box-shadow: none; background: none; }
.status.ok { color: var(--ok); border-color: var(--ok); }
.status.error { color: var(--error); border-color: var(--error); }
footer { text-align: center; padding: 0 1rem 1.25rem; color: var(--muted); font-size: 0.85rem; }
.visually-hidden { position: absolute; width: 1px; height: 1px; margin: -1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
@media (min-width: 760px) {
  main { padding-top: 2.5rem; }
  .option {
    grid-template-columns: minmax(12rem, 32%) 1fr auto;
    grid-template-areas: "vote bar figures";
    padding: 0.6rem 0.9rem 0.6rem 0.6rem;
  }
  ol { gap: 1rem; }
  .vote { min-height: 3.5rem; }
  .track { height: 2.6rem; border-radius: 0.6rem; }
  .figures { min-width: 7.5rem; }
  .count { font-size: 1.6rem; }
  .pct { font-size: 1.1rem; }
}
@media (prefers-reduced-motion: reduce) {
  .fill, .vote { transition: none; }
}
`

const SCRIPT = `"use strict";
(() => {
  const main = document.querySelector("main");
  const pollId = main.dataset.pollId;
  const question = document.getElementById("question");
  const list = document.getElementById("options");
  const empty = document.getElementById("empty");
  const total = document.getElementById("total");
  const closesAt = document.getElementById("closes-at");
  const banner = document.getElementById("closed");
  const live = document.getElementById("live");
  const status = document.getElementById("status");
  const PALETTE = ["#4263eb", "#f76707", "#0ca678", "#d6336c", "#7048e8", "#e8a100", "#1098ad", "#74b816"];
  const number = new Intl.NumberFormat();
  const votes = (n) => number.format(n) + (n === 1 ? " vote" : " votes");
  const storageKey = "livepoll:voted:" + pollId;

  let rows = new Map();
  let shape = "";
  let closed = false;
  let sending = false;
  let onePerVoter = false;
  let closeTimer;
  let myVote = null;
  try { myVote = localStorage.getItem(storageKey); } catch (e) { myVote = null; }

  let sayTimer;
  const say = (text, kind) => {
    clearTimeout(sayTimer);
    status.className = "status" + (kind ? " " + kind : "");
    // Cleared first so the same message said twice is announced twice.
    status.textContent = "";
    sayTimer = setTimeout(() => { status.textContent = text; }, 20);
  };

  const setLive = (state, text) => {
    live.dataset.state = state;
    live.textContent = text;
  };

  const optionsOf = (data) =>
    Array.isArray(data.options)
      ? data.options
      : Object.keys(data.results || {}).map((id) => ({ id, label: id, votes: data.results[id] }));

  const refreshButtons = () => {
    const locked = onePerVoter && myVote !== null;
    for (const [id, row] of rows) {
      row.button.disabled = closed;
      if (locked || sending) row.button.setAttribute("aria-disabled", "true");
      else row.button.removeAttribute("aria-disabled");
      const mine = onePerVoter && myVote === id;
      row.item.classList.toggle("chosen", mine);
      // In the button only when true, so it is part of the button's name only then.
      if (mine && !row.mine.isConnected) row.button.append(row.mine);
      if (!mine && row.mine.isConnected) row.mine.remove();
    }
  };

  const build = (options) => {
    rows = new Map();
    const items = options.map((option, index) => {
      const item = document.createElement("li");
      item.className = "option";
      item.dataset.option = option.id;
      item.style.setProperty("--c", PALETTE[index % PALETTE.length]);
      const button = document.createElement("button");
      button.type = "button";
      button.className = "vote";
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = option.label;
      const mine = document.createElement("span");
      mine.className = "mine";
      mine.textContent = "Your vote";
      button.append(label);
      const figuresId = "figures-" + index;
      button.setAttribute("aria-describedby", figuresId);
      button.addEventListener("click", () => vote(option));
      const track = document.createElement("div");
      track.className = "track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("div");
      fill.className = "fill";
      track.append(fill);
      const figures = document.createElement("p");
      figures.className = "figures";
      figures.id = figuresId;
      const count = document.createElement("span");
      count.className = "count";
      const unit = document.createElement("span");
      unit.className = "visually-hidden";
      const pct = document.createElement("span");
      pct.className = "pct";
      figures.append(count, unit, pct);
      item.append(button, track, figures);
      rows.set(option.id, { item, button, label, mine, fill, count, unit, pct });
      return item;
    });
    list.replaceChildren(...items);
  };

  const markClosed = () => {
    closed = true;
    banner.hidden = false;
    setLive("closed", "Final results");
    refreshButtons();
  };

  const draw = (data) => {
    if (typeof data.question === "string") {
      question.textContent = data.question;
      document.title = data.question + " · livepoll";
    }
    onePerVoter = data.one_vote_per_voter === true;
    const options = optionsOf(data);
    const nextShape = JSON.stringify(options.map((o) => [o.id, o.label]));
    // Rows are rebuilt only when the options change, so a focused button keeps its focus across updates.
    if (nextShape !== shape) {
      shape = nextShape;
      build(options);
    }
    empty.hidden = options.length > 0;
    const sum = options.reduce((n, o) => n + o.votes, 0);
    const most = options.reduce((n, o) => Math.max(n, o.votes), 0);
    for (const option of options) {
      const row = rows.get(option.id);
      const share = sum === 0 ? 0 : (option.votes * 100) / sum;
      row.fill.style.width = share.toFixed(2) + "%";
      row.count.textContent = number.format(option.votes);
      row.unit.textContent = option.votes === 1 ? " vote, " : " votes, ";
      row.pct.textContent = Math.round(share) + "%";
      row.item.classList.toggle("leading", most > 0 && option.votes === most);
    }
    total.textContent = votes(sum);
    clearTimeout(closeTimer);
    if (typeof data.closes_at === "string") {
      const at = Date.parse(data.closes_at);
      closesAt.hidden = false;
      closesAt.textContent = (at > Date.now() ? "Closes at " : "Closed at ") + new Date(at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      if (!closed && at > Date.now() && at - Date.now() < 2147483647) closeTimer = setTimeout(markClosed, at - Date.now());
      if (at <= Date.now()) data.closed = true;
    } else closesAt.hidden = true;
    if (data.closed === true) markClosed();
    else if (closed) {
      closed = false;
      banner.hidden = true;
    }
    if (!closed) setLive("live", "Live");
    refreshButtons();
  };

  const MESSAGES = {
    already_voted: "You have already voted in this poll.",
    poll_closed: "This poll is closed: no more votes are taken.",
    unknown_option: "That option is not part of this poll.",
    voter_required: "This poll allows one vote per person: allow cookies for this site and reload the page.",
    store_unavailable: "The poll is briefly unavailable. Please try again in a moment.",
    buffer_full: "The poll is very busy. Please try again in a moment."
  };

  const vote = async (option) => {
    if (closed || sending) return;
    if (onePerVoter && myVote !== null) return say(MESSAGES.already_voted, "error");
    sending = true;
    refreshButtons();
    say("Sending your vote…");
    try {
      const response = await fetch("/api/v1/vote/" + encodeURIComponent(pollId), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ option_id: option.id }),
        credentials: "same-origin"
      });
      let body = {};
      try { body = await response.json(); } catch (e) { body = {}; }
      if (response.ok) {
        say("Vote counted for " + option.label + ".", "ok");
        if (onePerVoter) remember(option.id);
      } else {
        const known = typeof body.error === "string" && Object.hasOwn(MESSAGES, body.error);
        say(known ? MESSAGES[body.error] : "Your vote was not counted (" + response.status + "). Please try again.", "error");
        if (body.error === "poll_closed") markClosed();
        if (body.error === "already_voted") remember("");
      }
    } catch (e) {
      say("Could not reach the server. Check your connection and try again.", "error");
    } finally {
      sending = false;
      refreshButtons();
    }
  };

  const remember = (optionId) => {
    myVote = optionId;
    try { localStorage.setItem(storageKey, optionId); } catch (e) { /* private mode: kept for this page only */ }
  };

  let retryMs = 1000;
  const connect = () => {
    const source = new EventSource("/api/v1/polls/" + encodeURIComponent(pollId) + "/stream");
    source.addEventListener("results", (event) => {
      retryMs = 1000;
      draw(JSON.parse(event.data));
    });
    source.addEventListener("error", () => {
      if (!closed) setLive("offline", "Reconnecting…");
      // The browser retries by itself unless the server refused the stream; then retry here, backing off.
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, 15000);
      }
    });
  };
  connect();
})();
`

const sha256 = (text: string) => createHash("sha256").update(text, "utf8").digest("base64")

/** Only the inline style and script above may run; the page talks to its own origin and nowhere else. */
const POLICY = [
  "default-src 'none'",
  `script-src 'sha256-${sha256(SCRIPT)}'`,
  `style-src 'sha256-${sha256(STYLE)}'`,
  "connect-src 'self'",
  "img-src data:",
  "base-uri 'none'",
  "form-action 'none'"
].join("; ")

const escapeHtml = (text: string) =>
  text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] ?? c)

/** `pollId` is already a valid poll id; it is escaped anyway, as everything put into markup is. */
export const render = (pollId: string): string => {
  const id = escapeHtml(pollId)
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="${POLICY}">
<meta name="color-scheme" content="light dark">
<link rel="icon" href="data:,">
<title>Poll ${id} · livepoll</title>
<style>${STYLE}</style>
</head>
<body>
<main data-poll-id="${id}">
<header>
<p class="meta"><span class="brand">livepoll</span><span id="live" class="live" data-state="connecting">Connecting…</span><span id="closes-at" hidden></span></p>
<h1 id="question">Poll ${id}</h1>
<p class="summary">Total: <strong id="total">0 votes</strong></p>
<p id="closed" class="banner" hidden>Voting has closed. These are the final results.</p>
</header>
<section aria-labelledby="question">
<h2 class="visually-hidden">Options and results</h2>
<ol id="options"></ol>
<p id="empty" class="empty" hidden>No votes yet.</p>
<p id="status" class="status" role="status" aria-live="polite"></p>
</section>
<noscript><p class="empty">This page needs JavaScript to vote and show live results.</p></noscript>
</main>
<footer>Poll <span>${id}</span> · results update live</footer>
<script>${SCRIPT}</script>
</body>
</html>
`
}
