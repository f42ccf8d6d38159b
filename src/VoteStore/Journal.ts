import { Context, Effect, Layer } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import type { Health, OptionId, PollId } from "../Domain.js"
import { JournalFailed } from "../Domain.js"
import { Metrics } from "../Metrics.js"
import { type Batch, type Increments } from "../VoteStore.js"

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

export type JournalHealth = NonNullable<Health["journal"]>

export interface JournalShape {
  readonly recover: Effect.Effect<Recovered>
  /**
   * Appends a vote; succeeds once its line is durable, fails (leaving no trace of it) when it cannot be made so.
   * `durable` runs synchronously the moment the line is durable, before a compaction can rewrite the file: the
   * caller counts the vote there, so a snapshot never misses a durable vote nor holds a refused one. A journal that
   * has no such moment apart from its own completion may leave it to the caller, who counts the vote on success.
   */
  readonly append: (pollId: PollId, optionId: OptionId, durable: () => void) => Effect.Effect<void, JournalFailed>
  readonly sealed: (partition: string, batch: Batch) => Effect.Effect<void, JournalFailed>
  readonly confirmed: (batchId: string) => Effect.Effect<void, JournalFailed>
  /**
   * Rewrites the journal as `state()`: called between flushes so the file stays as small as the buffer. Never fails:
   * when the new file cannot be written the old one stays in use, and the next call tries again.
   */
  readonly compact: (state: () => JournalState) => Effect.Effect<void>
  /** Whether records are being made durable; absent for a journal that cannot fail. */
  readonly health?: Effect.Effect<JournalHealth>
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
  const seen = new Set<string>()
  const lines = text.split("\n")
  // Every record is written with its newline: text after the last one is a record torn by a crash, whose vote never
  // got its 200. Even when it parses (`v 100 A` cut from `v 100 AB`, `c i-1` from `c i-12`) it must not count.
  lines.pop()
  for (const line of lines) {
    try {
      const [kind, a, b, c] = line.split(" ")
      if (kind === "v" && a && b) add(pending, new Map([[a as PollId, new Map([[b as OptionId, 1]])]]), 1)
      else if (kind === "p" && a) add(pending, decode(a), 1)
      else if (kind === "b" && a && b && c && !seen.has(b)) {
        // A batch sealed again (its first record made durable by a compaction in between) moves its votes once.
        const increments = decode(c)
        seen.add(b)
        add(pending, increments, -1)
        batches.set(b, { partition: a, batch: { id: b, increments } })
      } else if (kind === "c" && a) batches.delete(a)
    } catch {
      // A record that does not parse was never acknowledged; skip it.
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

type Callback = (error: NodeJS.ErrnoException | null) => void

/** The file-system calls the journal makes: node:fs itself, or a stand-in that fails on cue in tests. */
export interface JournalFs {
  readonly mkdirSync: (dir: string, options: { recursive: true }) => unknown
  readonly existsSync: (file: string) => boolean
  readonly readFileSync: (file: string) => Buffer
  readonly openSync: (file: string, flags: number) => number
  readonly closeSync: (fd: number) => void
  readonly writeSync: (fd: number, data: Uint8Array, offset: number, length: number) => number
  readonly fdatasyncSync: (fd: number) => void
  readonly fsyncSync: (fd: number) => void
  readonly renameSync: (from: string, to: string) => void
  readonly unlinkSync: (file: string) => void
  readonly write: (
    fd: number,
    data: Uint8Array,
    offset: number,
    length: number,
    position: null,
    callback: (error: NodeJS.ErrnoException | null, written: number) => void
  ) => void
  readonly fdatasync: (fd: number, callback: Callback) => void
  readonly ftruncate: (fd: number, length: number, callback: Callback) => void
}

export const nodeFs: JournalFs = fs

const { O_APPEND, O_CREAT, O_RDONLY, O_TRUNC, O_WRONLY } = fs.constants
/** Appends go to the end of the file wherever it was cut back to. */
const APPEND = O_WRONLY | O_CREAT | O_APPEND
const REPLACE = APPEND | O_TRUNC

const describe = (error: unknown) => (error instanceof Error ? error.message : String(error))

export const makeFile = Effect.fn("Journal.makeFile")(function* (dir: string, files: JournalFs = nodeFs) {
  const clock = yield* Effect.clock
  const metrics = yield* Metrics
  files.mkdirSync(dir, { recursive: true })
  const file = path.join(dir, "votes.journal")
  const existing = files.existsSync(file) ? files.readFileSync(file) : Buffer.alloc(0)
  const complete = existing.lastIndexOf(0x0a) + 1
  const recovered = replay(existing.subarray(0, complete).toString("utf8"))
  let fd: number = files.openSync(file, APPEND)
  /** The length of the file's durable, complete records: where it is cut back to after a failed write. */
  let good = complete
  /** Bytes past `good` may be in the file (a torn record, or a failed write that could not be cut off). */
  let dirty = complete < existing.length
  let closed = false
  const closeQuietly = (descriptor: number) => {
    try {
      files.closeSync(descriptor)
    } catch {
      // Nothing was written through it that is not durable already.
    }
  }
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      closed = true
      closeQuietly(fd)
    })
  )

  /** Since when writes have failed (undefined once one succeeds), and the last failure, for health. */
  let failingSince: number | undefined
  let lastFailure: { at: number; error: string } | undefined
  const note = (error: Error | null) => {
    if (error === null) return void (failingSince = undefined)
    const now = clock.unsafeCurrentTimeMillis()
    failingSince ??= now
    lastFailure = { at: now, error: error.message }
  }

  // Group commit: records queue while one write + fdatasync is under way, then go out together in the next.
  let queue: Array<string> = []
  let waiters: Array<Callback> = []
  let compactions: Array<() => void> = []
  let writing = false
  const kick = (): void => {
    if (writing) return
    // A compaction asked for during a write runs between two writes: nothing is in flight, and records queued
    // meanwhile go to the new file after the snapshot.
    if (compactions.length > 0) {
      const waiting = compactions
      compactions = []
      for (const run of waiting) run()
    }
    if (queue.length === 0) return
    writing = true
    const data = Buffer.from(queue.join(""))
    const done = waiters
    const target = fd
    queue = []
    waiters = []
    const finish = (error: NodeJS.ErrnoException | null): void => {
      writing = false
      if (error === null) good += data.length
      note(error)
      for (const w of done) w(error)
      kick()
    }
    // A failed write or sync may have left part or all of the records in the file: cut them off, so a replay never
    // counts a vote that was refused. Truncating frees space, so it works on a full disk too.
    const failed = (error: NodeJS.ErrnoException) =>
      files.ftruncate(target, good, (cut) => {
        dirty = cut !== null
        finish(error)
      })
    const writeFrom = (offset: number): void =>
      files.write(target, data, offset, data.length - offset, null, (error, written) => {
        if (error !== null) return failed(error)
        if (written <= 0) return failed(new Error("journal write made no progress"))
        if (offset + written < data.length) return writeFrom(offset + written)
        const syncing = performance.now()
        files.fdatasync(target, (synced) => {
          metrics.fsyncObserved((performance.now() - syncing) / 1000)
          return synced === null ? finish(null) : failed(synced)
        })
      })
    if (!dirty) return writeFrom(0)
    files.ftruncate(target, good, (cut) => {
      if (cut !== null) return finish(new Error(`the journal's tail could not be cut back: ${cut.message}`))
      dirty = false
      writeFrom(0)
    })
  }
  const write = (line: string, durable?: () => void) =>
    Effect.async<void, JournalFailed>((resume) => {
      queue.push(line)
      waiters.push((error) => {
        if (error !== null) return resume(Effect.fail(new JournalFailed({ reason: error.message })))
        durable?.()
        resume(Effect.void)
      })
      kick()
    })

  /** Writes the snapshot to a new file and moves it into place; on any error the current file stays in use. */
  const compactNow = (state: () => JournalState): Effect.Effect<void> => {
    if (closed) return Effect.void
    const temporary = `${file}.tmp`
    let next: number | undefined
    let text: Buffer
    try {
      text = Buffer.from(render(state()))
      next = files.openSync(temporary, REPLACE)
      for (let offset = 0; offset < text.length;) {
        const written = files.writeSync(next, text, offset, text.length - offset)
        if (written <= 0) throw new Error("journal write made no progress")
        offset += written
      }
      files.fdatasyncSync(next)
      files.renameSync(temporary, file)
    } catch (error) {
      if (next !== undefined) closeQuietly(next)
      try {
        files.unlinkSync(temporary)
      } catch {
        // Not created, or already gone.
      }
      return Effect.logWarning(`journal compaction failed; the current journal stays in use: ${describe(error)}`)
    }
    closeQuietly(fd)
    fd = next
    good = text.length
    dirty = false
    try {
      // The rename is durable once the directory is: until then a power cut could bring the old file back.
      const directory = files.openSync(dir, O_RDONLY)
      try {
        files.fsyncSync(directory)
      } finally {
        closeQuietly(directory)
      }
    } catch (error) {
      return Effect.logWarning(`journal directory could not be synced after compaction: ${describe(error)}`)
    }
    return Effect.void
  }

  const journal: JournalShape = {
    recover: Effect.succeed(recovered),
    append: (pollId, optionId, durable) => write(`v ${pollId} ${optionId}\n`, durable),
    sealed: (partition, batch) => write(`b ${partition} ${batch.id} ${encode(batch.increments)}\n`),
    confirmed: (batchId) => write(`c ${batchId}\n`),
    compact: (state) =>
      Effect.async<void>((resume) => {
        const run = () => resume(compactNow(state))
        if (!writing) return void run()
        // A write under way targets the current file: compact as soon as it has ended.
        compactions.push(run)
        return Effect.sync(() => void (compactions = compactions.filter((c) => c !== run)))
      }),
    health: Effect.sync(() => {
      const now = clock.unsafeCurrentTimeMillis()
      return {
        ok: failingSince === undefined,
        failingSinceMsAgo: failingSince === undefined ? null : now - failingSince,
        lastFailureMsAgo: lastFailure === undefined ? null : now - lastFailure.at,
        lastError: lastFailure?.error ?? null
      }
    })
  }
  return journal
})

export const layerFile = (dir: string): Layer.Layer<Journal> => Layer.scoped(Journal, makeFile(dir))

/** No journal: a crash loses what the buffer held (a graceful stop still flushes it). */
export const none: JournalShape = {
  recover: Effect.succeed({ pending: new Map(), batches: [] }),
  append: () => Effect.void,
  sealed: () => Effect.void,
  confirmed: () => Effect.void,
  compact: () => Effect.void
}

export const layerNone: Layer.Layer<Journal> = Layer.succeed(Journal, none)
