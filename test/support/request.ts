import { type Reply, toReply } from "./app.js"

/** A request with a text body, its answer read as `App`'s `request` reads it. */
export type Requester = (
  method: string,
  path: string,
  body?: string,
  headers?: Readonly<Record<string, string>>
) => Promise<Reply>

/** A `Requester` for the server at `baseUrl`. */
export const requestTo =
  (baseUrl: string): Requester =>
  async (method, path, body, headers = {}) => {
    const init = body === undefined ? { method, headers } : { method, body, headers }
    return toReply(await fetch(`${baseUrl}${path}`, init))
  }
