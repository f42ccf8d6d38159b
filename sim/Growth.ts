/**
 * A model of growing the ring while votes keep arriving: two nodes, `o` (the old owner of the polls that move) and
 * `n` (their new owner), each script of the protocol one atomic step on one node, and instances that know the old
 * ring, both rings (`REDIS_NODES_NEXT`) or the new ring only. Every step of a poll's move is its own event, and so is
 * each half of a flush (the old node, then the redirect to the new one), so any interleaving of votes, flushes, lost
 * answers, move steps, crashed and resumed moves, and instance restarts can be generated.
 *
 * This is the protocol the stores' Lua runs when they know two rings (src/VoteStore/Redis.ts's `Growth`,
 * src/VoteStore/Sharded.ts's `makeGrowing`, src/Polls/Redis.ts, and `npm run reshard -- --online` in src/Reshard.ts;
 * test/integration/growth.test.ts runs it against real redis-servers). The model pins down what each script must do,
 * and each `Flaw` switches off one piece of it, to show the property needs that piece.
 */

export type Node = "o" | "n"
export type Mode = "old" | "both" | "new"

/** One piece of the protocol switched off. */
export type Flaw =
  /** The merge on n does not set its marker NX: a merge run again after a crash adds the staged counts twice. */
  | "merge-without-marker"
  /** Scripts on o do not check the tombstone: writes after the freeze land in keys nobody reads again. */
  | "no-tombstone-check"
  /** voteOnce on n does not refuse while the poll's voters are still arriving: a voter votes twice. */
  | "no-incoming-check"
  /** o's batch marker does not remember which polls it sent on: a retried batch forgets to redirect them. */
  | "marker-forgets-moved"
  /** Redirected batch parts use n's node-wide marker: a retry of the redirect adds again. */
  | "redirect-without-poll-marker"
  /** A read of a moved poll adds the staged counts whether or not n has merged them. */
  | "read-ignores-merged"
  /** o stops migrating once the move is done: a poll new to both rings' instances lands on o, new-ring ones on n. */
  | "migrating-cleared-when-done"

/**
 * p0, p1 and p3 move from o to n; p2 stays on o and p4 on n (n is in both rings: its batches have a part of their own
 * there). p3 is new: it gets its first vote only once the move may have begun.
 */
export const POLLS = ["p0", "p1", "p2", "p3", "p4"] as const
export type Poll = (typeof POLLS)[number]
export const moves = (p: Poll) => p === "p0" || p === "p1" || p === "p3"
const ownerAfter = (p: Poll): Node => (moves(p) || p === "p4" ? "n" : "o")
const OPTIONS = ["A", "B"] as const
export const VOTERS = ["v1", "v2", "v3"] as const

type Counts = Map<string, number>

interface NodeState {
  counts: Map<Poll, Counts>
  voters: Map<Poll, Set<string>>
  staged: Map<Poll, { counts: Counts; voters: Set<string> }>
  tombstone: Map<Poll, string>
  merged: Set<string>
  incoming: Set<Poll>
  /** Node-wide batch markers, each with the polls that o sent on instead of applying. */
  batches: Map<string, ReadonlyArray<Poll>>
  pollBatches: Set<string>
  migrating: boolean
}

const emptyNode = (): NodeState => ({
  counts: new Map(),
  voters: new Map(),
  staged: new Map(),
  tombstone: new Map(),
  merged: new Set(),
  incoming: new Set(),
  batches: new Map(),
  pollBatches: new Set(),
  migrating: false
})

type Part = Map<Poll, Counts>

interface Flight {
  readonly id: string
  readonly parts: Part
  /** Polls o sent on, still to be applied on n with per-poll markers. */
  redirect: Part | undefined
  /** The o half's answer came back (a lost answer leaves it false: the same batch goes to o again). */
  oDone: boolean
}

interface Instance {
  mode: Mode
  readonly buffered: boolean
  pending: Part
  flight: Flight | undefined
}

export type Event =
  | { readonly kind: "vote"; readonly instance: number; readonly poll: Poll; readonly option: 0 | 1 }
  | { readonly kind: "voteOnce"; readonly instance: number; readonly poll: Poll; readonly voter: 0 | 1 | 2 }
  | { readonly kind: "flush"; readonly instance: number; readonly lose: boolean }
  | { readonly kind: "read"; readonly instance: number; readonly poll: Poll }
  | { readonly kind: "readStart"; readonly instance: number; readonly poll: Poll }
  | { readonly kind: "readEnd"; readonly instance: number }
  | { readonly kind: "restart"; readonly instance: number }
  | { readonly kind: "startReshard" }
  | { readonly kind: "moveStep"; readonly poll: Poll }
  | { readonly kind: "crashReshard" }

export interface Violation {
  readonly invariant: "lost-or-doubled" | "voter-twice" | "read-out-of-bounds" | "left-behind"
  readonly message: string
}

const add = (into: Counts, from: Counts) => {
  for (const [k, v] of from) into.set(k, (into.get(k) ?? 0) + v)
}
const total = (c: Counts | undefined) => [...(c?.values() ?? [])].reduce((s, v) => s + v, 0)
const copy = (c: Counts | undefined) => new Map(c ?? [])

/** The steps of one poll's move, as the reshard runs them; a crash sends every poll back to `start`. */
type MoveStep = "start" | "freeze" | "copy" | "merge" | "cleanup" | "done"

export const run = (events: ReadonlyArray<Event>, flaw?: Flaw): Violation | undefined => {
  const nodes: Record<Node, NodeState> = { o: emptyNode(), n: emptyNode() }
  const instances: Array<Instance> = [
    { mode: "old", buffered: false, pending: new Map(), flight: undefined },
    { mode: "old", buffered: true, pending: new Map(), flight: undefined },
    { mode: "old", buffered: true, pending: new Map(), flight: undefined }
  ]
  /** Votes answered 200, per poll; and what the scripts applied, per poll (the two agree once all is flushed). */
  const acked = new Map<Poll, number>()
  const applied = new Map<Poll, number>()
  const accepted = new Map<string, number>()
  let batchSeq = 0
  let moveSeq = 0
  let phase: "before" | "moving" | "after" = "before"
  const progress = new Map<Poll, MoveStep>()
  const moveIds = new Map<Poll, string>()
  const reads = new Map<number, { poll: Poll; low: number; partial: (() => number) | undefined }>()

  const bump = (m: Map<Poll, number>, p: Poll, k: number) => m.set(p, (m.get(p) ?? 0) + k)
  const hasData = (node: NodeState, p: Poll) => node.counts.has(p) || node.voters.has(p) || node.staged.has(p)
  /** What o's scripts check for a poll that moves: its tombstone, or o migrating without data of it. */
  const movedOnO = (p: Poll) => nodes.o.tombstone.has(p) || (nodes.o.migrating && !hasData(nodes.o, p))
  /** The same check, as o's write scripts make it. */
  const writeMovedOnO = (p: Poll) => flaw !== "no-tombstone-check" && movedOnO(p)
  const incr = (node: NodeState, p: Poll, option: string, k: number) => {
    let c = node.counts.get(p)
    if (c === undefined) node.counts.set(p, (c = new Map()))
    c.set(option, (c.get(option) ?? 0) + k)
    bump(applied, p, k)
  }
  /** Where an instance sends a poll's writes first, and whether that script checks the tombstone. */
  const route = (mode: Mode, p: Poll): { node: Node; check: boolean } =>
    !moves(p)
      ? { node: ownerAfter(p), check: false }
      : mode === "old"
        ? { node: "o", check: false }
        : mode === "new"
          ? { node: "n", check: false }
          : { node: "o", check: true }

  // --- the scripts -------------------------------------------------------------------------------------------------
  const vote = (mode: Mode, p: Poll, option: string) => {
    const r = route(mode, p)
    if (r.check && writeMovedOnO(p)) incr(nodes.n, p, option, 1)
    else incr(nodes[r.node], p, option, 1)
    return "ok" as const
  }
  const voteOnceOn = (node: NodeState, p: Poll, option: string, voter: string, checkIncoming: boolean) => {
    if (checkIncoming && flaw !== "no-incoming-check" && node.incoming.has(p)) return "retry" as const
    let set = node.voters.get(p)
    if (set === undefined) node.voters.set(p, (set = new Set()))
    if (set.has(voter)) return "already" as const
    set.add(voter)
    incr(node, p, option, 1)
    return "ok" as const
  }
  const voteOnce = (mode: Mode, p: Poll, option: string, voter: string) => {
    const r = route(mode, p)
    if (r.check && writeMovedOnO(p)) return voteOnceOn(nodes.n, p, option, voter, true)
    return voteOnceOn(nodes[r.node], p, option, voter, r.node === "n")
  }
  /** o's batch script: the node-wide marker, set NX with the polls it sent on; those are answered, not applied. */
  const batchOnO = (id: string, parts: Part, checked: (p: Poll) => boolean): Part => {
    const seen = nodes.o.batches.get(id)
    const sentOn = (ids: ReadonlyArray<Poll>) => new Map([...parts].filter(([p]) => ids.includes(p)))
    if (seen !== undefined) return flaw === "marker-forgets-moved" ? new Map() : sentOn(seen)
    const movedList: Array<Poll> = []
    for (const [p, c] of parts) {
      if (checked(p) && writeMovedOnO(p)) movedList.push(p)
      else for (const [option, k] of c) incr(nodes.o, p, option, k)
    }
    nodes.o.batches.set(id, movedList)
    return sentOn(movedList)
  }
  const batchOnN = (id: string, parts: Part, perPoll: boolean) => {
    if (!perPoll || flaw === "redirect-without-poll-marker") {
      if (nodes.n.batches.has(id)) return
      nodes.n.batches.set(id, [])
      for (const [p, c] of parts) for (const [option, k] of c) incr(nodes.n, p, option, k)
      return
    }
    for (const [p, c] of parts) {
      if (nodes.n.pollBatches.has(`${p}:${id}`)) continue
      nodes.n.pollBatches.add(`${p}:${id}`)
      for (const [option, k] of c) incr(nodes.n, p, option, k)
    }
  }
  /** A read as the instance's mode makes it: o first, then n if o says moved (two steps: `finish` is the second). */
  const readStart = (mode: Mode, p: Poll): (() => number) => {
    if (!moves(p)) {
      const here = total(nodes[ownerAfter(p)].counts.get(p))
      return () => here
    }
    if (mode === "old") {
      const here = total(nodes.o.counts.get(p))
      return () => here
    }
    if (mode === "new") {
      const here = total(nodes.n.counts.get(p))
      return () => here
    }
    if (!movedOnO(p)) {
      const here = total(nodes.o.counts.get(p))
      return () => here
    }
    const staged = nodes.o.staged.get(p)
    const stagedTotal = total(staged?.counts)
    const moveId = nodes.o.tombstone.get(p)
    return () => {
      const merged = moveId !== undefined && nodes.n.merged.has(`${p}:${moveId}`)
      return (
        total(nodes.n.counts.get(p)) +
        (staged !== undefined && (!merged || flaw === "read-ignores-merged") ? stagedTotal : 0)
      )
    }
  }

  // --- the reshard, one step of one poll at a time -----------------------------------------------------------------
  const moveStep = (p: Poll) => {
    const at = progress.get(p) ?? "start"
    const o = nodes.o
    const n = nodes.n
    switch (at) {
      case "start": {
        // Resume from what the nodes hold: staged → finish that move; live data → a new move; nothing → done.
        if (o.staged.has(p)) {
          n.incoming.add(p)
          return progress.set(p, "copy")
        }
        if (!hasData(o, p)) return progress.set(p, "done")
        n.incoming.add(p)
        return progress.set(p, "freeze")
      }
      case "freeze": {
        const moveId = `m${moveSeq++}`
        o.tombstone.set(p, moveId)
        o.staged.set(p, { counts: copy(o.counts.get(p)), voters: new Set(o.voters.get(p) ?? []) })
        o.counts.delete(p)
        o.voters.delete(p)
        moveIds.set(p, moveId)
        return progress.set(p, "copy")
      }
      case "copy": {
        const staged = o.staged.get(p)!
        let set = n.voters.get(p)
        if (set === undefined) n.voters.set(p, (set = new Set()))
        for (const v of staged.voters) set.add(v)
        return progress.set(p, "merge")
      }
      case "merge": {
        const staged = o.staged.get(p)!
        const marker = `${p}:${o.tombstone.get(p)}`
        if (flaw === "merge-without-marker" || !n.merged.has(marker)) {
          n.merged.add(marker)
          let c = n.counts.get(p)
          if (c === undefined) n.counts.set(p, (c = new Map()))
          add(c, staged.counts)
          // Counted where the votes were first applied; the merge moves them.
        }
        n.incoming.delete(p)
        return progress.set(p, "cleanup")
      }
      case "cleanup":
        o.staged.delete(p)
        return progress.set(p, "done")
      case "done":
        return
    }
  }

  // --- instances -------------------------------------------------------------------------------------------------
  /** One flush step of an instance: the o half of its batch in flight (starting one if none), or its redirect. */
  const flushStep = (inst: Instance, lose: boolean) => {
    if (inst.flight === undefined) {
      if (inst.pending.size === 0) return
      inst.flight = { id: `b${batchSeq++}`, parts: inst.pending, redirect: undefined, oDone: false }
      inst.pending = new Map()
    }
    const f = inst.flight
    if (!f.oDone) {
      const mode = inst.mode
      const toO = new Map([...f.parts].filter(([p]) => route(mode, p).node === "o"))
      const toN = new Map([...f.parts].filter(([p]) => route(mode, p).node === "n"))
      const sentOn = toO.size > 0 ? batchOnO(f.id, toO, (p) => route(mode, p).check) : new Map<Poll, Counts>()
      if (toN.size > 0) batchOnN(f.id, toN, false)
      if (lose) return // applied, the answer lost: the same batch is sent again
      f.oDone = true
      f.redirect = sentOn
      return
    }
    if (f.redirect !== undefined && f.redirect.size > 0) {
      batchOnN(f.id, f.redirect, true)
      if (lose) return
    }
    inst.flight = undefined
  }
  const drain = (inst: Instance) => {
    for (let i = 0; i < 10 && (inst.flight !== undefined || inst.pending.size > 0); i++) flushStep(inst, false)
  }

  const bufferVote = (inst: Instance, p: Poll, option: string) => {
    let c = inst.pending.get(p)
    if (c === undefined) inst.pending.set(p, (c = new Map()))
    c.set(option, (c.get(option) ?? 0) + 1)
  }

  // --- the run ---------------------------------------------------------------------------------------------------
  for (const e of events) {
    switch (e.kind) {
      case "vote": {
        const inst = instances[e.instance % instances.length]!
        // p3 is new: its first votes come once the move may have begun.
        if (e.poll === "p3" && phase === "before") break
        const option = OPTIONS[e.option]
        if (inst.buffered) bufferVote(inst, e.poll, option)
        else vote(inst.mode, e.poll, option)
        bump(acked, e.poll, 1)
        break
      }
      case "voteOnce": {
        if (e.poll === "p3" && phase === "before") break
        const inst = instances[e.instance % instances.length]!
        const voter = VOTERS[e.voter]
        const answer = voteOnce(inst.mode, e.poll, "A", voter)
        if (answer === "ok") {
          bump(acked, e.poll, 1)
          const key = `${e.poll}:${voter}`
          accepted.set(key, (accepted.get(key) ?? 0) + 1)
          if (accepted.get(key)! > 1) {
            return { invariant: "voter-twice", message: `voter ${voter} was counted twice on ${e.poll}` }
          }
        }
        break
      }
      case "flush": {
        flushStep(instances[e.instance % instances.length]!, e.lose)
        break
      }
      case "read": {
        const i = e.instance % instances.length
        const value = readStart(instances[i]!.mode, e.poll)()
        const now = applied.get(e.poll) ?? 0
        if (value !== now) {
          return { invariant: "read-out-of-bounds", message: `a read of ${e.poll} saw ${value}, ${now} were applied` }
        }
        break
      }
      case "readStart": {
        const i = e.instance % instances.length
        if (reads.has(i)) break
        reads.set(i, { poll: e.poll, low: applied.get(e.poll) ?? 0, partial: readStart(instances[i]!.mode, e.poll) })
        break
      }
      case "readEnd": {
        const i = e.instance % instances.length
        const r = reads.get(i)
        if (r === undefined) break
        reads.delete(i)
        const value = r.partial!()
        const high = applied.get(r.poll) ?? 0
        if (value < r.low || value > high) {
          return {
            invariant: "read-out-of-bounds",
            message: `a read of ${r.poll} saw ${value}, outside the ${r.low}..${high} applied while it ran`
          }
        }
        break
      }
      case "restart": {
        const i = e.instance % instances.length
        const inst = instances[i]!
        // A clean restart: the final flush, then the next ring. A read in progress is dropped with the process.
        const next: Mode | undefined =
          phase === "before" && inst.mode === "old"
            ? "both"
            : phase === "after" && inst.mode === "both"
              ? "new"
              : undefined
        if (next === undefined) break
        drain(inst)
        reads.delete(i)
        inst.mode = next
        break
      }
      case "startReshard": {
        // The reshard runs only once every instance knows both rings: the instances not restarted yet are, first.
        if (phase !== "before") break
        for (const [i, inst] of instances.entries()) {
          if (inst.mode !== "old") continue
          drain(inst)
          reads.delete(i)
          inst.mode = "both"
        }
        nodes.o.migrating = true
        phase = "moving"
        break
      }
      case "moveStep": {
        if (phase !== "moving" || !moves(e.poll)) break
        moveStep(e.poll)
        if (POLLS.filter(moves).every((p) => progress.get(p) === "done")) {
          phase = "after"
          if (flaw === "migrating-cleared-when-done") nodes.o.migrating = false
        }
        break
      }
      case "crashReshard": {
        if (phase !== "moving") break
        for (const p of POLLS) if (progress.get(p) !== "done") progress.set(p, "start")
        break
      }
    }
  }

  // The end of the procedure: every instance restarted on both rings, the move run to the end, every instance on the
  // new ring, every buffer flushed.
  for (const inst of instances) {
    if (inst.mode === "old") {
      drain(inst)
      inst.mode = "both"
    }
  }
  if (phase === "before") {
    nodes.o.migrating = true
    phase = "moving"
  }
  for (let round = 0; round < 8; round++) for (const p of POLLS.filter(moves)) moveStep(p)
  for (const inst of instances) {
    drain(inst)
    inst.mode = "new"
  }
  for (const p of POLLS) {
    const owner = nodes[ownerAfter(p)]
    const stored = total(owner.counts.get(p))
    const expected = acked.get(p) ?? 0
    if (stored !== expected) {
      return {
        invariant: "lost-or-doubled",
        message: `${p} holds ${stored} votes on its owner, ${expected} were answered 200`
      }
    }
    if (moves(p) && (hasData(nodes.o, p) || nodes.n.incoming.has(p))) {
      return { invariant: "left-behind", message: `${p} still has data on o, or n still waits for it` }
    }
  }
  return undefined
}
