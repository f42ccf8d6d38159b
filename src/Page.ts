import { createHash } from "node:crypto"
import { load } from "./Page/assets.js"

/**
 * The live results page of one poll: the question, a large button per option, and a horizontal bar chart fed by the
 * results stream. One self-contained document: inline CSS and script (src/Page/), system fonts, no requests but the
 * API's own. Everything that comes from data is set with `textContent`, never parsed as HTML.
 */

const sha256 = (text: string) => createHash("sha256").update(text, "utf8").digest("base64")

/** The script, the style and the policy that admits exactly them: made once, the first time a page is rendered. */
let made: { readonly script: string; readonly style: string; readonly policy: string } | undefined
const parts = () => {
  if (made !== undefined) return made
  const { script, style } = load()
  // Only the inline style and script may run; the page talks to its own origin and nowhere else.
  const policy = [
    "default-src 'none'",
    `script-src 'sha256-${sha256(script)}'`,
    `style-src 'sha256-${sha256(style)}'`,
    "connect-src 'self'",
    "img-src data:",
    "base-uri 'none'",
    "form-action 'none'"
  ].join("; ")
  return (made = { script, style, policy })
}

const escapeHtml = (text: string) =>
  text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] ?? c)

/**
 * `pollId` is already a valid poll id (its characters need no escape in a path); it is escaped anyway, as everything
 * put into markup is. The banner shown once the poll has closed links to its exports.
 */
export const render = (pollId: string): string => {
  const id = escapeHtml(pollId)
  const { script, style, policy } = parts()
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="${policy}">
<meta name="color-scheme" content="light dark">
<link rel="icon" href="data:,">
<title>Poll ${id} · livepoll</title>
<style>${style}</style>
</head>
<body>
<main data-poll-id="${id}">
<header>
<p class="meta"><span class="brand">livepoll</span><span id="live" class="live" data-state="connecting">Connecting…</span><span id="closes-at" hidden></span></p>
<h1 id="question">Poll ${id}</h1>
<p class="summary">Total: <strong id="total">0 votes</strong></p>
<p id="closed" class="banner" hidden>Voting has closed. These are the final results. <span class="downloads">Download them as <a id="export-csv" href="/api/v1/polls/${id}/results.csv" download>CSV</a> or <a id="export-json" href="/api/v1/polls/${id}/results.json" download="${id}-results.json">JSON</a>.</span></p>
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
<script>${script}</script>
</body>
</html>
`
}
