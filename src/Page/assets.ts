import { existsSync, readFileSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { fileURLToPath, pathToFileURL } from "node:url"

/**
 * The page's script (script.ts) and style (style.css), bundled by esbuild into one classic script and one stylesheet.
 * `npm run build` runs this module, compiled, to write them beside it into dist/Page/, where the compiled app reads
 * them; from source, `load` bundles them the first time the page is asked for, so starting the app costs nothing.
 * esbuild is a development dependency: production, built, never loads it.
 */

export interface Assets {
  readonly script: string
  readonly style: string
}

const BUILT = { script: new URL("script.js", import.meta.url), style: new URL("style.css", import.meta.url) }

/** src/Page/: the same path from this file's place in src/Page/ (from source) and in dist/Page/ (built). */
const SOURCES = new URL("../../src/Page/", import.meta.url)

const bundle = (): Assets => {
  // Required on demand, not imported: the built app must start without the development dependency.
  const esbuild = createRequire(import.meta.url)("esbuild") as typeof import("esbuild")
  const { outputFiles } = esbuild.buildSync({
    entryPoints: [fileURLToPath(new URL("script.ts", SOURCES)), fileURLToPath(new URL("style.css", SOURCES))],
    outdir: "out",
    write: false,
    bundle: true,
    format: "iife",
    target: "es2022",
    minify: true,
    logLevel: "silent"
  })
  const text = (extension: string) => outputFiles.find((file) => file.path.endsWith(extension))?.text ?? ""
  return { script: text(".js"), style: text(".css") }
}

/** The built files when there are (a build by `tsc` alone has none: it then bundles from src/ too). */
export const load = (): Assets => {
  const assets = existsSync(BUILT.script)
    ? { script: readFileSync(BUILT.script, "utf8"), style: readFileSync(BUILT.style, "utf8") }
    : bundle()
  // Each is inlined in the document: its closing tag inside it would end it early.
  if (assets.script.length === 0 || /<\/script/i.test(assets.script)) throw new Error("page script unfit to inline")
  if (assets.style.length === 0 || /<\/style/i.test(assets.style)) throw new Error("page style unfit to inline")
  return assets
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { script, style } = bundle()
  writeFileSync(BUILT.script, script)
  writeFileSync(BUILT.style, style)
}
