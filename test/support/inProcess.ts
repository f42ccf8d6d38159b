import { ConfigProvider, Effect, Layer, Logger, LogLevel, ManagedRuntime } from "effect"
import { AppConfig, rateLimitsOf } from "../../src/Config.js"
import * as Http from "../../src/Http.js"
import * as Metrics from "../../src/Metrics.js"
import * as Stages from "../../src/Stages.js"
import { freePort } from "./redis.js"

export interface InProcessApp {
  readonly baseUrl: string
  /** The metrics the app was given: one registry under its stores and its HTTP side. */
  readonly metrics: Metrics.MetricsShape
  readonly close: () => Promise<void>
}

/**
 * The app in this process, composed as main.ts composes it (the listener over the stages, a fresh Metrics under
 * both), configured by `env` alone: a test can look into its metrics without a process in between.
 */
export const startInProcess = async (env: Readonly<Record<string, string>>): Promise<InProcessApp> => {
  const port = await freePort()
  const provider = ConfigProvider.fromMap(new Map(Object.entries({ ...env, HOST: "127.0.0.1", PORT: String(port) })))
  const metrics = Metrics.make()
  const server = Layer.unwrapEffect(Effect.map(AppConfig, (c) => Http.layer({ ...c, rateLimits: rateLimitsOf(c) })))
  const app = server.pipe(
    Layer.provide(Stages.layer),
    Layer.provide(Layer.succeed(Metrics.Metrics, metrics)),
    Layer.provide(Logger.minimumLogLevel(LogLevel.Warning)),
    Layer.provide(Layer.setConfigProvider(provider))
  )
  const managed = ManagedRuntime.make(app)
  await managed.runtime()
  return { baseUrl: `http://127.0.0.1:${port}`, metrics, close: () => managed.dispose() }
}
