import { afterAll, beforeAll, expect } from "vitest"
import type { Stage } from "../../src/Config.js"
import type { Reply } from "./app.js"
import { type InProcessApp, startInProcess } from "./inProcess.js"
import { type RedisServer, startRedis } from "./redis.js"
import { type Requester, requestTo } from "./request.js"

/** One stage served in this process (see `startInProcess`), with a `request` that reads the answer as `App`'s does. */
export interface InProcessStage extends InProcessApp {
  readonly request: Requester
}

/** `env` is the configuration, as the app would read it from its environment; `stage` its `POLL_STAGE`. */
export const startStage = async (stage: Stage, env: Readonly<Record<string, string>> = {}): Promise<InProcessStage> => {
  const app = await startInProcess({ ...env, POLL_STAGE: stage })
  return { ...app, request: requestTo(app.baseUrl) }
}

export interface StagesOnTwoNodes {
  /** The stage's app; there once the file's `beforeAll` has run. */
  readonly app: (stage: Stage) => InProcessStage
  readonly first: () => RedisServer
  readonly second: () => RedisServer
}

/**
 * Two real redis-servers and each of `stages` served in this process, started before the file's tests (`env` is
 * their configuration, given the two servers) and stopped after them.
 */
export const serveOnTwoNodes = (
  stages: ReadonlyArray<Stage>,
  env: (first: RedisServer, second: RedisServer) => Readonly<Record<string, string>>
): StagesOnTwoNodes => {
  let first: RedisServer | undefined
  let second: RedisServer | undefined
  const started = new Map<Stage, InProcessStage>()
  beforeAll(async () => {
    ;[first, second] = await Promise.all([startRedis(), startRedis()])
    const config = env(first, second)
    for (const [stage, app] of await Promise.all(stages.map(async (s) => [s, await startStage(s, config)] as const))) {
      started.set(stage, app)
    }
  }, 60_000)
  afterAll(async () => {
    await Promise.all([...started.values()].map((s) => s.close()))
    await Promise.all([first?.stop(), second?.stop()])
  })
  return { app: (stage) => started.get(stage)!, first: () => first!, second: () => second! }
}

/** A refusal as the contract words it: JSON `{"error": <code>, "message": <some text>}` with its status. */
export const expectError = (reply: Reply, status: number, error: string) =>
  expect({ status: reply.status, type: reply.headers.get("content-type"), body: reply.json }).toEqual({
    status,
    type: "application/json",
    body: { error, message: expect.stringMatching(/\S/) }
  })
