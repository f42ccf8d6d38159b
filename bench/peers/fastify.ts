/**
 * The peer: the assignment's stages as one would write them in an afternoon with Fastify and ioredis, chosen by
 * POLL_STAGE (memory, redis, cached, batched, sharded), with REDIS_URL and REDIS_NODES as the app reads them. Same
 * routes and bodies as the app; ids are checked by the routes' schemas (400). It does not do what the app does
 * beyond that: no option cap, no idempotent flush (a failed MULTI loses its votes), no journal, no live feed, no
 * poll definitions, no bound on the cache or the buffer. A vote with a voter_id counts only a voter's first
 * (SADD to Redis before the count; a Set in memory for `memory`).
 */
import Fastify, { type FastifyInstance } from "fastify"
import { Redis } from "ioredis"

type Counts = Map<string, Map<string, number>>
const stage = process.env.POLL_STAGE ?? "memory"
const urls = stage === "sharded" ? process.env.REDIS_NODES!.split(",") : [process.env.REDIS_URL!]
const nodes = stage === "memory" ? [] : urls.map((url) => new Redis(url))
const nodeOf = (poll: string) => {
  let hash = 0
  for (let i = 0; i < poll.length; i++) hash = (hash * 31 + poll.charCodeAt(i)) >>> 0
  return nodes[hash % nodes.length]!
}
const key = (poll: string) => `poll:{${poll}}:counts`

const add = (counts: Counts, poll: string, option: string, n: number) => {
  const options = counts.get(poll) ?? counts.set(poll, new Map()).get(poll)!
  options.set(option, (options.get(option) ?? 0) + n)
}
const memory: Counts = new Map()
const buffer: Counts = new Map()
const cache = new Map<string, { at: number; results: Record<string, number> }>()
const voters = new Map<string, Set<string>>()

const firstVote = async (poll: string, voter: string) => {
  if (stage !== "memory") return (await nodeOf(poll).sadd(`poll:{${poll}}:voters`, voter)) === 1
  const seen = voters.get(poll) ?? voters.set(poll, new Set()).get(poll)!
  if (seen.has(voter)) return false
  seen.add(voter)
  return true
}
const vote = async (poll: string, option: string) => {
  if (stage === "memory") add(memory, poll, option, 1)
  else if (stage === "batched") add(buffer, poll, option, 1)
  else await nodeOf(poll).hincrby(key(poll), option, 1)
}
const read = async (poll: string) => {
  if (stage === "memory") return { results: Object.fromEntries(memory.get(poll) ?? []), via: "in_memory" }
  const hit = cache.get(poll)
  if (stage === "cached" && hit !== undefined && Date.now() - hit.at < 5000)
    return { results: hit.results, via: "app_cache" }
  const results: Record<string, number> = {}
  for (const [option, n] of Object.entries(await nodeOf(poll).hgetall(key(poll)))) results[option] = Number(n)
  for (const [option, n] of buffer.get(poll) ?? []) results[option] = (results[option] ?? 0) + n
  if (stage === "cached") cache.set(poll, { at: Date.now(), results })
  return { results, via: "redis" }
}
const flush = async () => {
  if (buffer.size === 0) return
  const multi = nodes[0]!.multi()
  for (const [poll, options] of buffer) for (const [option, n] of options) multi.hincrby(key(poll), option, n)
  buffer.clear()
  await multi.exec()
}
if (stage === "batched") setInterval(() => flush().catch((error) => console.error("flush failed", error)), 10_000)

const id = { type: "string", pattern: "^[A-Za-z0-9_.-]{1,64}$" } as const
const params = { type: "object", required: ["poll_id"], properties: { poll_id: id } } as const
const voteBody = {
  type: "object",
  required: ["option_id"],
  properties: { option_id: id, voter_id: { type: "string", minLength: 1, maxLength: 128 } }
} as const
type Poll = { Params: { poll_id: string } }

const routes = async (app: FastifyInstance) => {
  app.get("/", async () => ({ status: "healthy" }))
  app.post<Poll & { Body: { option_id: string; voter_id?: string } }>(
    "/vote/:poll_id",
    { schema: { params, body: voteBody } },
    async (request, reply) => {
      const { poll_id } = request.params
      const { option_id, voter_id } = request.body
      if (voter_id !== undefined && !(await firstVote(poll_id, voter_id))) {
        return reply.code(409).send({ error: "already_voted", message: "this voter has voted already" })
      }
      await vote(poll_id, option_id)
      return { poll_id, option_id }
    }
  )
  app.get<Poll>("/results/:poll_id", { schema: { params } }, async (request) => {
    const { results, via } = await read(request.params.poll_id)
    return { poll_id: request.params.poll_id, results, served_via: via }
  })
}

const app = Fastify({ bodyLimit: 16 * 1024 })
app.setErrorHandler((error: { statusCode?: number; message: string }, _request, reply) => {
  const status = error.statusCode ?? 500
  void reply.code(status).send({ error: status === 400 ? "invalid_request" : "internal_error", message: error.message })
})
await app.register(routes)
await app.register(routes, { prefix: "/api/v1" })
await app.listen({ port: Number(process.env.PORT ?? 8000), host: process.env.HOST ?? "127.0.0.1" })

const stop = async () => {
  await app.close()
  await flush()
  await Promise.all(nodes.map((node) => node.quit()))
  process.exit(0)
}
process.once("SIGTERM", () => void stop())
process.once("SIGINT", () => void stop())
