// First: V8 settings that must hold before anything else allocates.
import "./Tuning.js"
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Layer, Logger } from "effect"
import { AppConfig } from "./Config.js"
import * as Http from "./Http.js"
import * as Stages from "./Stages.js"

// The listener takes its port and its bounds from the same config as the stages.
const server = Layer.unwrapEffect(Effect.map(AppConfig, Http.layer))

const main = server.pipe(Layer.provide(Stages.layer), Layer.provide(Logger.logFmt))

NodeRuntime.runMain(Layer.launch(main), { disablePrettyLogger: true })
