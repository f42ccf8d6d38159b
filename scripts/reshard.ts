/**
 * `npm run reshard -- --to <nodes> [--dry-run] [--online]`: moves the polls whose owner changes from the ring of
 * `REDIS_NODES` to the ring of `<nodes>` (the same syntax), and prints the plan, one line per node, and what it moved.
 * Safe to interrupt and run again with the same arguments. `--online` runs while the app serves, once every instance
 * knows both rings (`REDIS_NODES_NEXT=<nodes>`); without it, the run refuses while any instance is connected.
 * `--finish` ends an online growth once every instance serves the new ring alone.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Either, Logger, LogLevel } from "effect"
import { parseRedisNodes } from "../src/Config.js"
import * as Reshard from "../src/Reshard.js"

const DEFAULT_NODES = "redis://127.0.0.1:7000,redis://127.0.0.1:7001"
const USAGE =
  "usage: npm run reshard -- --to NAME=URL,... [--dry-run] [--online | --finish]   (REDIS_NODES names the nodes of now)"

/** The command's arguments; a string says what is wrong with them. */
const parseArgs = (
  argv: ReadonlyArray<string>
): Either.Either<{ to: string; dryRun: boolean; online: boolean; finish: boolean }, string> => {
  let to: string | undefined
  let dryRun = false
  let online = false
  let finish = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === "--dry-run") dryRun = true
    else if (arg === "--online") online = true
    else if (arg === "--finish") finish = true
    else if (arg === "--to") to = argv[++i]
    else if (arg.startsWith("--to=")) to = arg.slice("--to=".length)
    else return Either.left(`unknown argument ${arg}`)
  }
  if (finish && (online || dryRun)) return Either.left("--finish goes alone")
  return to === undefined || to === "" ? Either.left("--to is missing") : Either.right({ to, dryRun, online, finish })
}

/** The command's output: each log line as its message, warnings and errors marked. */
const plain = Logger.make(({ logLevel, message }) => {
  const text = Array.isArray(message) ? message.join(" ") : String(message)
  if (LogLevel.greaterThanEqual(logLevel, LogLevel.Warning)) console.error(`${logLevel.label.toLowerCase()}: ${text}`)
  else console.log(text)
})

const main = Effect.gen(function* () {
  const args = parseArgs(process.argv.slice(2))
  if (Either.isLeft(args)) return yield* Effect.fail(`${args.left}\n${USAGE}`)
  const from = parseRedisNodes(process.env["REDIS_NODES"] ?? DEFAULT_NODES)
  if (Either.isLeft(from)) return yield* Effect.fail(`REDIS_NODES ${from.left}`)
  const to = parseRedisNodes(args.right.to)
  if (Either.isLeft(to)) return yield* Effect.fail(`--to ${to.left}`)
  if (args.right.finish) return yield* Reshard.finish({ from: from.right, to: to.right })
  yield* Reshard.run({ from: from.right, to: to.right, dryRun: args.right.dryRun, online: args.right.online })
}).pipe(
  Effect.catchAll((error) =>
    Effect.zipRight(
      Effect.logError(typeof error === "string" ? error : error.message),
      Effect.sync(() => {
        process.exitCode = 1
      })
    )
  ),
  Effect.provide(Logger.replace(Logger.defaultLogger, plain))
)

NodeRuntime.runMain(main, { disablePrettyLogger: true })
