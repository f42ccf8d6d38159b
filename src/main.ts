// First: V8 settings that must hold before anything else allocates.
import "./Tuning.js"
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Layer, Logger } from "effect"
import { AppConfig, LogFormat, rateLimitsOf } from "./Config.js"
import * as Http from "./Http.js"
import * as Metrics from "./Metrics.js"
import * as Stages from "./Stages.js"

// The listener takes its port, its bounds and its rate limits from the same config as the stages.
const server = Layer.unwrapEffect(Effect.map(AppConfig, (c) => Http.layer({ ...c, rateLimits: rateLimitsOf(c) })))

// One line per event: JSON objects by default, logfmt for a person reading a terminal (`npm run dev`).
const logger = Layer.unwrapEffect(Effect.map(LogFormat, (format) => (format === "json" ? Logger.json : Logger.logFmt)))

// One metrics registry for the stores and the listener alike, so it is provided outside both.
const main = server.pipe(Layer.provide(Stages.layer), Layer.provide(Metrics.layer), Layer.provide(logger))

NodeRuntime.runMain(Layer.launch(main), { disablePrettyLogger: true })
