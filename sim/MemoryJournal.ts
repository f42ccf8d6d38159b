import { Effect } from "effect"
import type { JournalShape, JournalState } from "../src/VoteStore/Journal.js"
import { encode, render, replay } from "../src/VoteStore/Journal.js"
import { type Increments } from "../src/VoteStore.js"

/**
 * The write-behind journal kept as text in memory instead of a file, in the record format of src/Journal.ts and
 * replayed with its `replay`. One journal outlives the instances that use it, as the file outlives a process, so a
 * restarted instance recovers what the previous one could not flush.
 */
export interface MemoryJournal {
  readonly journal: JournalShape
  readonly text: () => string
  /** Votes the journal would replay now: pending plus unconfirmed batches. */
  readonly votes: () => number
}

const sum = (increments: Increments) => {
  let n = 0
  for (const options of increments.values()) for (const v of options.values()) n += v
  return n
}

export const make = (): MemoryJournal => {
  let text = ""
  const journal: JournalShape = {
    recover: Effect.sync(() => replay(text)),
    append: (pollId, optionId) => Effect.sync(() => void (text += `v ${pollId} ${optionId}\n`)),
    sealed: (partition, batch) =>
      Effect.sync(() => void (text += `b ${partition} ${batch.id} ${encode(batch.increments)}\n`)),
    confirmed: (batchId) => Effect.sync(() => void (text += `c ${batchId}\n`)),
    compact: (state) => Effect.sync(() => void (text = render(state())))
  }
  return {
    journal,
    text: () => text,
    votes: () => {
      const recovered = replay(text)
      return sum(recovered.pending) + recovered.batches.reduce((n, { batch }) => n + sum(batch.increments), 0)
    }
  }
}
