/**
 * What every redis-server started here has in common, the dev script's shards and cluster nodes and the tests'
 * throwaway servers alike: how it is started, and how one question is put to it. This module starts nothing.
 */
import { Redis } from "ioredis"

/** A redis-server setting and its value, as a pair of command-line words. */
export type Setting = readonly [string, string]

/**
 * redis-server's arguments for a server on 127.0.0.1:`port` with its data in `dir` and these settings. No RDB
 * snapshots: where data must survive a restart, the settings turn the append-only file on.
 */
export const serverArgs = (port: number, dir: string, settings: ReadonlyArray<Setting>): Array<string> => [
  "--port",
  String(port),
  "--bind",
  "127.0.0.1",
  "--dir",
  dir,
  ...settings.flat(),
  "--save",
  ""
]

/**
 * Runs commands against the server on 127.0.0.1:`port` on a connection of its own; undefined when it does not answer
 * (nothing listening, an error reply, or no answer within a second).
 */
export const ask = async <A>(port: number, run: (client: Redis) => Promise<A>): Promise<A | undefined> => {
  const client = new Redis({
    port,
    host: "127.0.0.1",
    lazyConnect: true,
    connectTimeout: 1000,
    commandTimeout: 1000,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null
  })
  client.on("error", () => {})
  try {
    await client.connect()
    return await run(client)
  } catch {
    return undefined
  } finally {
    client.disconnect()
  }
}
