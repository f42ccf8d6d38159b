/**
 * What a fake is told to inject: per operation a queue of scripted faults, used in order before the random rates
 * apply, and the rates themselves, changed in part at any time. The fakes draw the random faults themselves, each from
 * its own source.
 */

/** The part the simulations and tests steer a fake with. */
export interface FaultControls<Op, Fault, Rates> {
  /** Faults for the next calls of `op`, used in order before the random rates apply. */
  readonly script: (op: Op, ...faults: ReadonlyArray<Fault>) => void
  readonly clearScript: () => void
  /** Changes the given rates; the others stay as they are. */
  readonly setRates: (rates: Rates) => void
}

export interface Faults<Op, Fault, Rates> extends FaultControls<Op, Fault, Rates> {
  /** The next scripted fault of `op`, taken off its queue; undefined once the queue is empty. */
  readonly nextScripted: (op: Op) => Fault | undefined
  readonly rates: () => Rates
}

export const make = <Op, Fault, Rates extends object>(initial: Rates): Faults<Op, Fault, Rates> => {
  let rates = initial
  const scripted = new Map<Op, Array<Fault>>()
  return {
    script: (op, ...faults) => {
      const queue = scripted.get(op) ?? []
      queue.push(...faults)
      scripted.set(op, queue)
    },
    clearScript: () => scripted.clear(),
    setRates: (next) => {
      rates = { ...rates, ...next }
    },
    nextScripted: (op) => {
      const queue = scripted.get(op)
      return queue !== undefined && queue.length > 0 ? queue.shift() : undefined
    },
    rates: () => rates
  }
}
