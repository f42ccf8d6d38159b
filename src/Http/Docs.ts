import { Effect } from "effect"
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { type Reply, textReply } from "./Reply.js"

/**
 * The API document (`GET /api/v1/openapi.json`, see OpenApi) and the page that renders it (`GET /docs`): Swagger UI
 * from the swagger-ui-dist package, served by this server like the rest, so the page fetches nothing from elsewhere.
 *
 * Both are made on first use, not at start: the document's module takes @effect/platform's HttpApi and OpenApi, a
 * few hundred milliseconds to load, and Swagger UI's bundle is 1.5 MB to hold; an instance that is never asked for
 * them pays for neither.
 */

let document: Reply | undefined

/** `GET /api/v1/openapi.json`: the document, made by the first request (synchronous from then on). */
export const openApi: Effect.Effect<Reply> = Effect.suspend(() =>
  document === undefined
    ? Effect.map(
        Effect.promise(() => import("./OpenApi.js")),
        (module) => (document = module.REPLY)
      )
    : Effect.succeed(document)
)

/**
 * Everything the page loads is its own server's; images may be data URIs (Swagger UI's icons are). No inline script
 * or style: the page starts Swagger UI from the end of the script it loads (see `script`).
 */
const POLICY = [
  "default-src 'self'",
  "img-src 'self' data:",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'"
].join("; ")

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>livepoll API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui.js"></script>
</body>
</html>
`

/** `GET /docs`. */
export const PAGE_REPLY = textReply(200, "text/html; charset=utf-8", PAGE, {
  "content-security-policy": POLICY,
  "cache-control": "no-cache"
})

/** What the page asks Swagger UI for: the document of this server, and no validator badge (another site's). */
const SWAGGER_UI_OPTIONS = {
  url: "/api/v1/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: "none"
} as const

/** The bundle's reference to its source map, which is not served. */
const SOURCE_MAP = /\n\/[/*]# sourceMappingURL=\S+(?: \*\/)?\s*$/

/** The assets change only with the package: a day's caching. */
const ASSET_HEADERS = { "cache-control": "public, max-age=86400", "x-content-type-options": "nosniff" }

let assets: { readonly script: Reply; readonly style: Reply } | undefined

/** swagger-ui-dist's standalone bundle and stylesheet, read from node_modules once. */
const load = () => {
  if (assets !== undefined) return assets
  const dir = dirname(createRequire(import.meta.url).resolve("swagger-ui-dist/package.json"))
  const read = (file: string) => readFileSync(join(dir, file), "utf8").replace(SOURCE_MAP, "\n")
  // The one call that starts Swagger UI goes at the end of its own script: an inline script would need the policy
  // to admit it.
  const script = `${read("swagger-ui-bundle.js")};\nSwaggerUIBundle(${JSON.stringify(SWAGGER_UI_OPTIONS)});\n`
  assets = {
    script: textReply(200, "text/javascript; charset=utf-8", Buffer.from(script), ASSET_HEADERS),
    style: textReply(200, "text/css; charset=utf-8", Buffer.from(read("swagger-ui.css")), ASSET_HEADERS)
  }
  return assets
}

/** `GET /docs/swagger-ui.js`. */
export const script = (): Reply => load().script

/** `GET /docs/swagger-ui.css`. */
export const style = (): Reply => load().style
