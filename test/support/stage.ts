import type { Stage } from "../../src/Config.js"
import type { Reply } from "./app.js"
import { type InProcessApp, startInProcess } from "./inProcess.js"

/** One stage served in this process (see `startInProcess`), with a `request` that reads the answer as `App`'s does. */
export interface InProcessStage extends InProcessApp {
  readonly request: (
    method: string,
    path: string,
    body?: string,
    headers?: Readonly<Record<string, string>>
  ) => Promise<Reply>
}

/** `env` is the configuration, as the app would read it from its environment; `stage` its `POLL_STAGE`. */
export const startStage = async (stage: Stage, env: Readonly<Record<string, string>> = {}): Promise<InProcessStage> => {
  const app = await startInProcess({ ...env, POLL_STAGE: stage })
  return {
    ...app,
    request: async (method, path, body, headers = {}) => {
      const init = body === undefined ? { method, headers } : { method, body, headers }
      const response = await fetch(`${app.baseUrl}${path}`, init)
      const text = await response.text()
      let json: unknown = undefined
      try {
        json = JSON.parse(text)
      } catch {
        json = undefined
      }
      return { status: response.status, headers: response.headers, text, json }
    }
  }
}
