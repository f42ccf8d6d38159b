// First: V8 settings that must hold before anything else allocates.
import "./Tuning.js"
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Layer, Logger } from "effect"
import cluster from "node:cluster"
import { AppConfig, LogFormat, rateLimitsOf } from "./Config.js"
import * as Http from "./Http.js"
import * as Metrics from "./Metrics.js"
import * as Stages from "./Stages.js"
import * as Workers from "./Workers.js"

// The listener takes its port, its bounds and its rate limits from the same config as the stages.
const server = Layer.unwrapEffect(Effect.map(AppConfig, (c) => Http.layer({ ...c, rateLimits: rateLimitsOf(c) })))

// One line per event: JSON objects by default, logfmt for a person reading a terminal (`npm run dev`).
const logger = Layer.unwrapEffect(Effect.map(LogFormat, (format) => (format === "json" ? Logger.json : Logger.logFmt)))

// One metrics registry for the stores and the listener alike, so it is provided outside both.
const main = server.pipe(Layer.provide(Stages.layer), Layer.provide(Metrics.layer), Layer.provide(logger))

// A worker of `WORKERS=N` is the same app, with its index on its metrics (and, through asWorker, on its log lines);
// a scrape of any worker answers every worker's metrics.
const worker = (index: number) =>
  server.pipe(Layer.provide(Stages.layer), Layer.provide(Workers.metricsLayer(index)), Layer.provide(logger))

// WORKERS=1: the app in this process. More: a primary that forks the workers (src/Workers.ts) and serves nothing.
const standalone = Effect.flatMap(AppConfig, (c) =>
  c.workers > 1
    ? Effect.provide(Workers.primary(c), logger)
    : Effect.zipRight(Workers.journalsLeft(c), Layer.launch(main))
)

const index = Workers.workerIndex()

const program = !cluster.isWorker
  ? standalone
  : index === undefined
    ? // A worker of some other primary (a process manager's cluster mode) is one instance, whatever WORKERS says.
      Layer.launch(main)
    : Workers.asWorker(index)(Layer.launch(worker(index)))

NodeRuntime.runMain(program, { disablePrettyLogger: true })
