import { NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { Config, Layer, Logger } from "effect"
import { createServer } from "node:http"
import * as Http from "./Http.js"
import * as Stages from "./Stages.js"

const server = NodeHttpServer.layerConfig(createServer, {
  port: Config.port("PORT").pipe(Config.withDefault(8000)),
  host: Config.string("HOST").pipe(Config.withDefault("0.0.0.0"))
})

const main = Http.serve.pipe(Layer.provide(server), Layer.provide(Stages.layer), Layer.provide(Logger.logFmt))

NodeRuntime.runMain(Layer.launch(main))
