import { afterAll, beforeAll } from "vitest"
import { type App, type AppOptions, startApp } from "./app.js"
import { type RedisServer, startRedis } from "./redis.js"

export interface AppsOnRedis {
  /** The server; there once the file's `beforeAll` has run. */
  readonly redis: () => RedisServer
  /** `startApp` with `REDIS_URL` set to the server's (unless `env` sets it); the app is killed after the file. */
  readonly start: (options?: AppOptions) => Promise<App>
}

/** A throwaway redis-server for the file's tests and the app processes they start over it, both gone after them. */
export const appsOnRedis = (): AppsOnRedis => {
  let redis: RedisServer | undefined
  const apps: Array<App> = []
  beforeAll(async () => {
    redis = await startRedis()
  })
  afterAll(async () => {
    await Promise.all(apps.map((a) => a.kill()))
    await redis?.stop()
  })
  return {
    redis: () => redis!,
    start: async (options = {}) => {
      const app = await startApp({ ...options, env: { REDIS_URL: redis!.url, ...options.env } })
      apps.push(app)
      return app
    }
  }
}
