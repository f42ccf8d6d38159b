import { Effect } from "effect"
import type { VoteStoreShape } from "../VoteStore.js"
import { type Reply, reply } from "./Reply.js"

/** `GET /`: the process is up, whatever the store says. */
export const HEALTHY = reply(200, { status: "healthy" })

/** `GET /health`: the store's nodes, buffers and journal. */
export const make = (store: VoteStoreShape): Effect.Effect<Reply> =>
  Effect.map(store.health, (h) => {
    // Degraded too when a buffer's flushes keep failing or its journal cannot be written: a stuck buffer is an outage.
    const ok = h.nodes.every((n) => n.reachable) && !h.flushes?.some((f) => f.failing) && h.journal?.ok !== false
    return reply(ok ? 200 : 503, {
      status: ok ? "ok" : "degraded",
      nodes: h.nodes,
      pending_votes: h.pendingVotes,
      ...(h.flushes && {
        flushes: h.flushes.map((f) => ({
          node: f.node,
          pending_votes: f.pendingVotes,
          failing: f.failing,
          failing_since_ms_ago: f.failingSinceMsAgo,
          last_failure_ms_ago: f.lastFailureMsAgo,
          last_success_ms_ago: f.lastSuccessMsAgo,
          last_error: f.lastError
        }))
      }),
      ...(h.journal && {
        journal: {
          ok: h.journal.ok,
          failing_since_ms_ago: h.journal.failingSinceMsAgo,
          last_failure_ms_ago: h.journal.lastFailureMsAgo,
          last_error: h.journal.lastError
        }
      })
    })
  })
