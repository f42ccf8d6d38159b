// First: V8 settings that must hold before anything else allocates.
import "./Tuning.js"
import { NodeRuntime } from "@effect/platform-node"
import { Config, Effect, Layer, Logger } from "effect"
import * as Http from "./Http.js"
import * as Stages from "./Stages.js"

const server = Layer.unwrapEffect(
  Effect.map(
    Config.all({
      port: Config.port("PORT").pipe(Config.withDefault(8000)),
      host: Config.string("HOST").pipe(Config.withDefault("0.0.0.0"))
    }),
    Http.layer
  )
)

const main = server.pipe(Layer.provide(Stages.layer), Layer.provide(Logger.logFmt))

NodeRuntime.runMain(Layer.launch(main), { disablePrettyLogger: true })
