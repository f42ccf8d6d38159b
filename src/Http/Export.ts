import { Clock, Effect, Either } from "effect"
import { isOpen, type PollDefinition, type PollId, PollNotFound } from "../Domain.js"
import type * as Voting from "../Voting.js"
import { parsePollId } from "./Decode.js"
import { pollBody } from "./Polls.js"
import { fromError, type Reply, reply, textReply } from "./Reply.js"

/** A poll's final counts as files: `results.json` with its definition, `results.csv` one row per option. */

interface Row {
  readonly option_id: string
  readonly label: string
  readonly votes: number
}

interface Exported {
  readonly pollId: PollId
  readonly poll: PollDefinition | undefined
  readonly rows: ReadonlyArray<Row>
  readonly now: number
}

const CSV_COLUMNS = ["poll_id", "question", "option_id", "label", "votes"] as const

/** A spreadsheet takes a cell starting with one of these for a formula (OWASP's list): such a cell gets a `'` first. */
const FORMULA_START = /^[=+\-@\t\r]/
/** RFC 4180: a field holding a separator, a quote or a line break is quoted, its quotes doubled. */
const NEEDS_QUOTES = /[",\r\n]/

export const csvCell = (text: string): string => {
  const safe = FORMULA_START.test(text) ? `'${text}` : text
  return NEEDS_QUOTES.test(safe) ? `"${safe.replaceAll('"', '""')}"` : safe
}

/** RFC 4180's lines: CRLF after each, the header's included. */
const csvLine = (cells: ReadonlyArray<string | number>) =>
  `${cells.map((c) => (typeof c === "number" ? String(c) : csvCell(c))).join(",")}\r\n`

const csvOf = ({ pollId, poll, rows }: Exported) =>
  csvLine(CSV_COLUMNS) +
  rows.map((r) => csvLine([pollId, poll?.question ?? "", r.option_id, r.label, r.votes])).join("")

const jsonOf = ({ pollId, poll, rows, now }: Exported) => ({
  poll_id: pollId,
  poll: poll === undefined ? null : pollBody(poll, now),
  results: rows,
  total_votes: rows.reduce((sum, r) => sum + r.votes, 0),
  final: poll !== undefined && !isOpen(poll, now),
  exported_at: new Date(now).toISOString()
})

/** Exports read the counts exactly: past the read cache, with this instance's buffered votes (`tallyExact`). */
export const make = (voting: ReturnType<typeof Voting.make>) => {
  const exported = (rawPollId: string, answer: (e: Exported) => Reply): Effect.Effect<Reply> => {
    const parsed = parsePollId(rawPollId)
    if (Either.isLeft(parsed)) return Effect.succeed(parsed.left)
    const pollId = parsed.right
    return Effect.match(
      Effect.flatMap(voting.tallyExact(pollId), (t) =>
        Effect.flatMap(Clock.currentTimeMillis, (now): Effect.Effect<Exported, PollNotFound> => {
          // A defined poll: every option in its order, zeros too. An ad-hoc one: what was voted for, by id.
          const rows: ReadonlyArray<Row> =
            t.poll === undefined
              ? Object.keys(t.counts)
                  .sort()
                  .map((id) => ({ option_id: id, label: "", votes: t.counts[id] ?? 0 }))
              : t.poll.options.map((o) => ({ option_id: o.id, label: o.label, votes: t.counts[o.id] ?? 0 }))
          if (t.poll === undefined && rows.length === 0) return new PollNotFound({ pollId })
          return Effect.succeed({ pollId, poll: t.poll, rows, now })
        })
      ),
      { onFailure: fromError, onSuccess: answer }
    )
  }

  const exportJson = (rawPollId: string) => exported(rawPollId, (e) => reply(200, jsonOf(e)))

  const exportCsv = (rawPollId: string) =>
    exported(rawPollId, (e) =>
      textReply(200, "text/csv; charset=utf-8", csvOf(e), {
        "content-disposition": `attachment; filename="${e.pollId}-results.csv"`,
        "x-content-type-options": "nosniff"
      })
    )

  return { exportJson, exportCsv }
}
