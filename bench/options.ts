/**
 * What `npm run bench -- ...` accepts. The app is a black box here, so the stage names are spelled out again; two are
 * variants, not stages of their own: `cluster-wait0` is `cluster` with `REDIS_WAIT_REPLICAS=0`, no `WAIT` after a
 * flushed batch (`cluster` leaves the setting unset, 1 on a cluster whose masters have a replica each), and
 * `full-workers2` is `full` with `WORKERS=2`, a primary forking two workers through node:cluster.
 */
export const STAGES = [
  "memory",
  "redis",
  "cached",
  "batched",
  "sharded",
  "full",
  "full-workers2",
  "cluster",
  "cluster-wait0"
] as const
export type Stage = (typeof STAGES)[number]

/** The stages that run on the Redis Cluster the bench starts (3 masters, a replica each). */
export const CLUSTER_STAGES: ReadonlyArray<Stage> = ["cluster", "cluster-wait0"]

/**
 * The stages that run as more than one process: a primary and its workers. Such a server may use every CPU (two
 * workers on one CPU would measure one CPU), and its CPU time is the sum over the primary and its workers.
 */
export const MULTI_PROCESS_STAGES: ReadonlyArray<Stage> = ["full-workers2"]

/** What each stage of the bench runs as: its `POLL_STAGE`, and the settings it adds to the stage's own. */
export const runsAs = (stage: Stage): { readonly pollStage: string; readonly settings: Record<string, string> } =>
  stage === "cluster-wait0"
    ? { pollStage: "cluster", settings: { REDIS_WAIT_REPLICAS: "0" } }
    : stage === "full-workers2"
      ? { pollStage: "full", settings: { WORKERS: "2" } }
      : { pollStage: stage, settings: {} }

/**
 * `hot`: votes on one poll; `spread`: votes over 10,000 polls; `read`: reads of one poll; `voters`: votes on one
 * defined poll with one vote per voter, each from a voter not seen before (what the voter check costs, next to
 * `hot`); `spread1m`: votes on 1,000,000 distinct polls, one each, to watch memory (buffer and cache must stay
 * bounded).
 */
export const WORKLOADS = ["hot", "spread", "read", "voters", "spread1m"] as const
/** The workloads measured for throughput, one row per server. */
export type ThroughputWorkload = Exclude<Workload, "spread1m">
export type Workload = (typeof WORKLOADS)[number]

/** The stages whose memory the `spread1m` workload watches: those with a write-behind buffer. */
export const RSS_STAGES: ReadonlyArray<Stage> = ["batched", "full"]

/** The stages bench/peers/fastify.ts has: the assignment's five (`full` is this app's own composition). */
export const PEER_STAGES: ReadonlyArray<Stage> = ["memory", "redis", "cached", "batched", "sharded"]

export interface Options {
  /** Seconds of measured load per stage and workload (whole seconds: wrk's -d). */
  readonly duration: number
  /** Seconds of unmeasured load before each measurement, so the JIT and connection pools are warm. */
  readonly warmup: number
  readonly connections: number
  /** wrk threads, 1 or 2; undefined: 2 where the harness has two CPUs or more and the connections split evenly. */
  readonly threads: number | undefined
  /** Runs of each stage per workload (the bare server runs once more); each row is its server's median run. */
  readonly repeat: number
  readonly stages: ReadonlyArray<Stage>
  readonly workloads: ReadonlyArray<Workload>
  /** Votes sent by `spread1m`, each to a poll of its own. */
  readonly rssVotes: number
  /** Upper bound on the time `spread1m` may take per stage. */
  readonly rssMaxSeconds: number
  /** redis-server's `appendfsync`: `everysec` is Redis' default with AOF on; `always` makes the disk part of it. */
  readonly fsync: "everysec" | "always"
  /** Watch Redis with MONITOR to count the commands clients send apart from those Lua scripts run. */
  readonly monitor: boolean
  /** Give each server under test a CPU of its own, the harness (load generator, Redis) the others (bench/pin.ts). */
  readonly pin: boolean
  /** Also measure the bare server with an Effect fiber per request (bench/bare.ts, BARE_FIBER). */
  readonly fiberBaseline: boolean
  /** After each stage of the app, its peer (bench/peers/fastify.ts) in the same round, where it has one. */
  readonly peers: boolean
  /** The app with its rate limits on (quotas no run reaches), to measure what checking them costs. */
  readonly rateLimits: boolean
  /** Directory for latest.json and latest.svg. */
  readonly out: string
}

export const defaults: Options = {
  duration: 10,
  warmup: 1,
  connections: 50,
  threads: undefined,
  repeat: 1,
  stages: STAGES,
  workloads: ["hot", "spread", "read", "voters"],
  rssVotes: 1_000_000,
  rssMaxSeconds: 300,
  fsync: "everysec",
  monitor: true,
  pin: true,
  fiberBaseline: true,
  peers: true,
  rateLimits: false,
  out: "bench/out"
}

export const usage = `Usage: npm run bench -- [options]   (needs dist/: npm run build, and wrk)

  --duration SECONDS     measured load per stage and workload, whole seconds (default ${defaults.duration})
  --warmup SECONDS       unmeasured load before each measurement, whole seconds (default ${defaults.warmup})
  --connections N        concurrent HTTP connections (default ${defaults.connections})
  --threads N            wrk threads, 1 or 2 (default 2 where the harness has two CPUs or more, else 1);
                         the connections must split evenly between them
  --repeat N             runs of each stage per workload, in rounds (bare, then each stage and its peer), plus
                         one more run of the bare server at the end; each row is its median run (default ${defaults.repeat})
  --stages a,b,c         of ${STAGES.join(",")} (default all);
                         ${CLUSTER_STAGES.join(" and ")} start a Redis Cluster of 3 masters and 3 replicas;
                         cluster-wait0 is cluster with REDIS_WAIT_REPLICAS=0 (no WAIT after a flushed batch);
                         full-workers2 is full with WORKERS=2 (two node:cluster workers), allowed every CPU,
                         its CPU the sum over the primary and its workers
  --workloads a,b        of ${WORKLOADS.join(",")} (default ${defaults.workloads.join(",")})
                         spread1m runs on the ${RSS_STAGES.join(" and ")} stages only
  --rss-votes N          votes of spread1m, one per poll (default ${defaults.rssVotes})
  --rss-max-seconds S    time bound of spread1m per stage (default ${defaults.rssMaxSeconds})
  --fsync MODE           redis-server appendfsync: everysec or always (default ${defaults.fsync})
  --no-monitor           count Redis commands with INFO commandstats only (Lua-internal ones included),
                         without a MONITOR connection to tell them apart
  --no-pin               let the kernel place the harness and the servers on any core, instead of the server under
                         test on a core of its own and the load generator and Redis on the others
  --no-fiber-baseline    skip the bare server that runs each request in an Effect fiber (what a fiber per request
                         costs, with nothing else of the app)
  --no-peers             skip the Fastify + ioredis peer of each stage (${PEER_STAGES.join(", ")})
  --rate-limits          run the app with RATE_LIMIT=on and quotas no run reaches: what checking the limits costs
                         (off by default: all the load comes from one address, which the limits exist to turn away)
  --out DIR              where latest.json and latest.svg go (default ${defaults.out}, not committed;
                         bench/results holds the committed results)
`

const number = (flag: string, text: string | undefined, min: number, integer: boolean): number => {
  const value = Number(text)
  if (text === undefined || text.trim() === "" || !Number.isFinite(value) || value < min) {
    throw new Error(`${flag} needs a number of at least ${min}, got ${text ?? "nothing"}`)
  }
  if (integer && !Number.isInteger(value)) throw new Error(`${flag} needs a whole number, got ${text}`)
  return value
}

const list = <A extends string>(flag: string, text: string | undefined, allowed: ReadonlyArray<A>): Array<A> => {
  const items = (text ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
  if (items.length === 0) throw new Error(`${flag} needs a comma-separated list of ${allowed.join(",")}`)
  for (const item of items) {
    if (!(allowed as ReadonlyArray<string>).includes(item)) {
      throw new Error(`${flag}: unknown ${item}; choose from ${allowed.join(",")}`)
    }
  }
  // In the canonical order, without duplicates, so tables and charts always read the same way.
  return allowed.filter((a) => items.includes(a))
}

/** Parses the command line; throws an Error whose message says what is wrong. `--help` returns undefined. */
export const parse = (argv: ReadonlyArray<string>): Options | undefined => {
  const options: { -readonly [K in keyof Options]: Options[K] } = { ...defaults }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    const eq = arg.indexOf("=")
    const flag = eq > 0 ? arg.slice(0, eq) : arg
    const value = () => (eq > 0 ? arg.slice(eq + 1) : argv[++i])
    switch (flag) {
      case "--help":
      case "-h":
        return undefined
      case "--duration":
        options.duration = number(flag, value(), 1, true)
        break
      case "--warmup":
        options.warmup = number(flag, value(), 0, true)
        break
      case "--connections":
        options.connections = number(flag, value(), 1, true)
        break
      case "--threads":
        options.threads = number(flag, value(), 1, true)
        if (options.threads > 2) throw new Error(`--threads is 1 or 2, got ${options.threads}`)
        break
      case "--repeat":
        options.repeat = number(flag, value(), 1, true)
        break
      case "--stages":
        options.stages = list(flag, value(), STAGES)
        break
      case "--workloads":
        options.workloads = list(flag, value(), WORKLOADS)
        break
      case "--rss-votes":
        options.rssVotes = number(flag, value(), 1, true)
        break
      case "--rss-max-seconds":
        options.rssMaxSeconds = number(flag, value(), 1, true)
        break
      case "--fsync": {
        const mode = value()
        if (mode !== "everysec" && mode !== "always") throw new Error(`--fsync is everysec or always, got ${mode}`)
        options.fsync = mode
        break
      }
      case "--no-monitor":
        options.monitor = false
        break
      case "--no-pin":
        options.pin = false
        break
      case "--no-fiber-baseline":
        options.fiberBaseline = false
        break
      case "--no-peers":
        options.peers = false
        break
      case "--rate-limits":
        options.rateLimits = true
        break
      case "--out":
        options.out = value() ?? ""
        if (options.out === "") throw new Error("--out needs a directory")
        break
      default:
        throw new Error(`unknown option ${arg}`)
    }
  }
  if (options.threads !== undefined && options.connections % options.threads !== 0) {
    throw new Error(`--connections (${options.connections}) must split evenly between --threads (${options.threads})`)
  }
  return options
}
