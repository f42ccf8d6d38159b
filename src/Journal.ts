import { Context, Effect, Layer } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import type { Batch, Increments, OptionId, PollId } from "./Domain.js"
import { JournalFailed } from "./Domain.js"

/**
 * Local write-ahead journal of the write-behind buffer, so a killed process loses no vote it answered 200 to.
 *
 * One line per record:
 *   v <poll> <option>                a vote (appended, group-committed with fdatasync, before the 200)
 *   p <json increments>              pending votes, as written by compaction
 *   b <partition> <id> <json incr>   pending votes sealed into batch <id>, durable before the batch is sent
 *   c <id>                           batch <id> confirmed by the store
 * Replaying the lines in order rebuilds the buffer: pending votes, and the batches not confirmed, which are sent
 * again under their own id (the store ignores an id it has applied already, so nothing is counted twice).
 */

type Counter = Map<PollId, Map<OptionId, number>>

export interface JournalState {
  readonly pending: ReadonlyArray<Increments>
  readonly batches: ReadonlyArray<{ readonly partition: string; readonly batch: Batch }>
}

export interface Recovered {
  readonly pending: Counter
  readonly batches: ReadonlyArray<{ readonly partition: string; readonly batch: Batch }>
}

export interface JournalShape {
  readonly recover: Effect.Effect<Recovered>
  readonly append: (pollId: PollId, optionId: OptionId) => Effect.Effect<void, JournalFailed>
  readonly sealed: (partition: string, batch: Batch) => Effect.Effect<void, JournalFailed>
  readonly confirmed: (batchId: string) => Effect.Effect<void>
  /** Rewrites the journal as `state()`: called between flushes so the file stays as small as the buffer. */
  readonly compact: (state: () => JournalState) => Effect.Effect<void>
}

export class Journal extends Context.Tag("livepoll/Journal")<Journal, JournalShape>() {}

/** One line's JSON form of increments. */
export const encode = (increments: Increments) =>
  JSON.stringify([...increments].map(([pollId, options]) => [pollId, [...options]]))

const decode = (json: string): Counter =>
  new Map(
    (JSON.parse(json) as Array<[PollId, Array<[OptionId, number]>]>).map(([pollId, options]) => [
      pollId,
      new Map(options)
    ])
  )

const add = (into: Counter, from: Increments, sign: 1 | -1) => {
  for (const [pollId, options] of from) {
    let target = into.get(pollId)
    if (target === undefined) into.set(pollId, (target = new Map()))
    for (const [optionId, n] of options) {
      const next = (target.get(optionId) ?? 0) + sign * n
      if (next === 0) target.delete(optionId)
      else target.set(optionId, next)
    }
    if (target.size === 0) into.delete(pollId)
  }
}

export const replay = (text: string): Recovered => {
  const pending: Counter = new Map()
  const batches = new Map<string, { partition: string; batch: Batch }>()
  for (const line of text.split("\n")) {
    try {
      const [kind, a, b, c] = line.split(" ")
      if (kind === "v" && a && b) add(pending, new Map([[a as PollId, new Map([[b as OptionId, 1]])]]), 1)
      else if (kind === "p" && a) add(pending, decode(a), 1)
      else if (kind === "b" && a && b && c) {
        const increments = decode(c)
        add(pending, increments, -1)
        batches.set(b, { partition: a, batch: { id: b, increments } })
      } else if (kind === "c" && a) batches.delete(a)
    } catch {
      // Only the last line can be torn by a crash mid-write, and its vote never got its 200.
    }
  }
  return { pending, batches: [...batches.values()] }
}

/** The journal text that replays to `state`. */
export const render = (state: JournalState) => {
  let text = ""
  for (const increments of state.pending) if (increments.size > 0) text += `p ${encode(increments)}\n`
  for (const { batch, partition } of state.batches) {
    text += `p ${encode(batch.increments)}\nb ${partition} ${batch.id} ${encode(batch.increments)}\n`
  }
  return text
}

export const makeFile = Effect.fn("Journal.makeFile")(function* (dir: string) {
  fs.mkdirSync(dir, { recursive: true })
  const file = path.join(dir, "votes.journal")
  const existing = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : ""
  let fd: number = fs.openSync(file, "a")
  yield* Effect.addFinalizer(() => Effect.sync(() => fs.closeSync(fd)))

  // Group commit: records queue while one write + fdatasync is under way, then go out together in the next.
  let queue: Array<string> = []
  let waiters: Array<(error: Error | null) => void> = []
  let writing = false
  const kick = () => {
    if (writing || queue.length === 0) return
    writing = true
    const data = queue.join("")
    const done = waiters
    queue = []
    waiters = []
    const finish = (error: Error | null): void => {
      writing = false
      for (const w of done) w(error)
      kick()
    }
    fs.write(fd, data, (error) => (error ? finish(error) : fs.fdatasync(fd, finish)))
  }
  const write = (line: string) =>
    Effect.async<void, JournalFailed>((resume) => {
      queue.push(line)
      waiters.push((error) => resume(error ? Effect.fail(new JournalFailed({ reason: error.message })) : Effect.void))
      kick()
    })

  const journal: JournalShape = {
    recover: Effect.sync(() => replay(existing)),
    append: (pollId, optionId) => write(`v ${pollId} ${optionId}\n`),
    sealed: (partition, batch) => write(`b ${partition} ${batch.id} ${encode(batch.increments)}\n`),
    confirmed: (batchId) => write(`c ${batchId}\n`).pipe(Effect.ignore),
    compact: (state) =>
      Effect.sync(() => {
        // A write under way targets the current file; compact next time rather than race it.
        if (writing) return
        const temporary = `${file}.tmp`
        const next = fs.openSync(temporary, "w")
        fs.writeSync(next, render(state()))
        fs.fdatasyncSync(next)
        fs.renameSync(temporary, file)
        fs.closeSync(fd)
        fd = next
        // Records still queued describe changes the snapshot already holds: they are durable now.
        const done = waiters
        queue = []
        waiters = []
        for (const w of done) w(null)
      })
  }
  return journal
})

export const layerFile = (dir: string): Layer.Layer<Journal> => Layer.scoped(Journal, makeFile(dir))

/** No journal: a crash loses what the buffer held (a graceful stop still flushes it). */
export const layerNoneService: JournalShape = {
  recover: Effect.succeed({ pending: new Map(), batches: [] }),
  append: () => Effect.void,
  sealed: () => Effect.void,
  confirmed: () => Effect.void,
  compact: () => Effect.void
}

export const layerNone: Layer.Layer<Journal> = Layer.succeed(Journal, layerNoneService)
