import { HttpServer } from "@effect/platform"
import { NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { Config, Effect, Layer, Logger } from "effect"
import { createServer } from "node:http"
import * as Http from "./Http.js"
import * as Stages from "./Stages.js"

const nodeServer = createServer()

const server = NodeHttpServer.layerConfig(() => nodeServer, {
  port: Config.port("PORT").pipe(Config.withDefault(8000)),
  host: Config.string("HOST").pipe(Config.withDefault("0.0.0.0"))
})

/**
 * On shutdown the platform stops listening and waits for open connections to end. Requests already running finish;
 * idle keep-alive connections are closed as they go quiet, and anything still open after the deadline is cut, so a
 * client holding a connection cannot keep the final flush from running.
 */
const drainConnections = Layer.scopedDiscard(
  Effect.gen(function* () {
    yield* HttpServer.HttpServer
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        nodeServer.closeIdleConnections()
        const idle = setInterval(() => nodeServer.closeIdleConnections(), 50)
        const deadline = setTimeout(() => nodeServer.closeAllConnections(), 3000)
        nodeServer.once("close", () => {
          clearInterval(idle)
          clearTimeout(deadline)
        })
      })
    )
  })
)

const main = Layer.mergeAll(Http.serve, drainConnections).pipe(
  Layer.provide(server),
  Layer.provide(Stages.layer),
  Layer.provide(Logger.logFmt)
)

NodeRuntime.runMain(Layer.launch(main), { disablePrettyLogger: true })
