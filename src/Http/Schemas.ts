import { Schema } from "effect"
import { OptionId, PollDefinition, PollId } from "../Domain.js"

/**
 * The answers' bodies as Schemas, for the API document (see OpenApi): the handlers build these objects, and
 * test/OpenApi.test.ts checks real answers against the document generated from them. Requests are Domain's schemas.
 */

/** A count of votes (or of anything else). */
const Count = Schema.Int.pipe(Schema.nonNegative())

/** Milliseconds before the answer; null when it has not happened. */
const MsAgo = Schema.NullOr(Schema.Number)

/** `GET /`: the process is up, whatever the store says. */
export const Healthy = Schema.Struct({ status: Schema.Literal("healthy") }).annotations({
  identifier: "Healthy",
  description: "The process is up (the liveness check): answered whatever the store says."
})

/** `GET /health`: 200 `ok`, or 503 `degraded` with the same body. */
export const Health = Schema.Struct({
  status: Schema.Literal("ok", "degraded"),
  nodes: Schema.Array(Schema.Struct({ name: Schema.String, reachable: Schema.Boolean })),
  pending_votes: Count.annotations({ description: "Votes buffered and not yet flushed to the store." }),
  flushes: Schema.optional(
    Schema.Array(
      Schema.Struct({
        node: Schema.String,
        pending_votes: Count,
        failing: Schema.Boolean,
        failing_since_ms_ago: MsAgo,
        last_failure_ms_ago: MsAgo,
        last_success_ms_ago: MsAgo,
        last_error: Schema.NullOr(Schema.String)
      })
    ).annotations({ description: "With a write-behind buffer: how its flushes to each node are going." })
  ),
  journal: Schema.optional(
    Schema.Struct({
      ok: Schema.Boolean,
      failing_since_ms_ago: MsAgo,
      last_failure_ms_ago: MsAgo,
      last_error: Schema.NullOr(Schema.String)
    }).annotations({ description: "With a journal: whether votes can be made durable." })
  )
}).annotations({
  identifier: "Health",
  description: "Each store node's reachability, the pending buffer and its flushes, the journal."
})

/** `POST /vote/{poll_id}`: the vote is counted. */
export const VoteAccepted = Schema.Struct({ poll_id: PollId, option_id: OptionId }).annotations({
  identifier: "VoteAccepted",
  description: "The vote is counted."
})

const Results = Schema.Record({ key: Schema.String, value: Count }).annotations({
  description: "Votes by option id."
})

const ServedVia = Schema.String.annotations({
  description: "Where the answer came from: `in_memory`, `redis`, `app_cache` or a shard's name."
})

/** The counts of a poll never defined: the options voted for. */
export const AdHocResults = Schema.Struct({ poll_id: PollId, results: Results, served_via: ServedVia }).annotations({
  identifier: "AdHocResults",
  description: "A poll never defined: the options voted for (none yet: `{}`)."
})

/** The counts of a defined poll: every option, in its order, zeros too, with the poll's rules. */
export const DefinedResults = Schema.Struct({
  ...AdHocResults.fields,
  question: PollDefinition.fields.question,
  options: Schema.Array(Schema.Struct({ ...PollDefinition.fields.options.value.fields, votes: Count })),
  one_vote_per_voter: PollDefinition.fields.one_vote_per_voter,
  closes_at: PollDefinition.fields.closes_at,
  closed: PollDefinition.fields.closed
}).annotations({
  identifier: "DefinedResults",
  description: "A defined poll: every option in its order, zeros too, with the poll's rules."
})

/** `GET /results/{poll_id}`. */
export const PollResults = Schema.Union(AdHocResults, DefinedResults)

/** A result stream's `results` event: its data is the results without `served_via`. */
export const StreamResults = Schema.Union(
  AdHocResults.omit("served_via"),
  DefinedResults.omit("served_via")
).annotations({
  identifier: "StreamResults",
  description: "The data of each `results` event of a poll's stream: its results, without `served_via`."
})

/** A poll's definition as answered: the definition, and whether it takes votes now. */
export const Poll = Schema.Struct({
  ...PollDefinition.fields,
  open: Schema.Boolean.annotations({ description: "Not closed, and its closing time (if any) is still ahead." })
}).annotations({ identifier: "Poll", description: "A poll's definition, and whether it takes votes now." })

/** `POST /polls`: the poll, with the key that closes it. */
export const CreatedPoll = Schema.Struct({
  ...Poll.fields,
  organiser_key: Schema.String.annotations({
    description: "Closes the poll (`Authorization: Bearer <organiser_key>`); shown in this answer only."
  })
}).annotations({ identifier: "CreatedPoll", description: "The poll defined, with its organiser key." })

/** `GET /polls`: one page of the defined polls. */
export const PollPage = Schema.Struct({
  polls: Schema.Array(Poll),
  next_cursor: Schema.NullOr(Schema.String).annotations({
    description: "The cursor of the next page; null on the last page."
  })
}).annotations({ identifier: "PollPage", description: "One page of the defined polls." })

/** `GET /polls/{poll_id}/results.json`: a poll's counts with its definition. */
export const ResultsExport = Schema.Struct({
  poll_id: PollId,
  poll: Schema.NullOr(Poll).annotations({ description: "The definition; null for a poll never defined." }),
  results: Schema.Array(
    Schema.Struct({
      option_id: OptionId,
      label: Schema.String.annotations({ description: "Empty for a poll never defined." }),
      votes: Count
    })
  ).annotations({ description: "A defined poll's options in its order; else the options voted for, by id." }),
  total_votes: Count,
  final: Schema.Boolean.annotations({ description: "The poll is closed: these counts will not change." }),
  exported_at: Schema.String.annotations({ description: "When the export was made (ISO 8601)." })
}).annotations({ identifier: "ResultsExport", description: "A poll's counts with its definition." })

/** Any refusal: `{"error": code, "message": text}` (see Reply.fromError). */
export const ErrorBody = Schema.Struct({ error: Schema.String, message: Schema.String })
