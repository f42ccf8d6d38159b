import { existsSync, readFileSync, writeFileSync } from "node:fs"
import { fileURLToPath, pathToFileURL } from "node:url"

/**
 * The page's script (script.ts) and style (style.css), bundled by esbuild into one classic script and one stylesheet.
 * `npm run build` runs this module, compiled, to write them beside it into dist/Page/, where the compiled app reads
 * them; from source, `load` bundles them at start-up. esbuild is a development dependency: production, built, never
 * loads it.
 */

export interface Assets {
  readonly script: string
  readonly style: string
}

const BUILT = { script: new URL("script.js", import.meta.url), style: new URL("style.css", import.meta.url) }

/** src/Page/: the same path from this file's place in src/Page/ (from source) and in dist/Page/ (built). */
const SOURCES = new URL("../../src/Page/", import.meta.url)

const bundle = async (): Promise<Assets> => {
  const esbuild = await import("esbuild")
  const { outputFiles } = await esbuild.build({
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
export const load = async (): Promise<Assets> => {
  const assets = existsSync(BUILT.script)
    ? { script: readFileSync(BUILT.script, "utf8"), style: readFileSync(BUILT.style, "utf8") }
    : await bundle()
  // Each is inlined in the document: its closing tag inside it would end it early.
  if (assets.script.length === 0 || /<\/script/i.test(assets.script)) throw new Error("page script unfit to inline")
  if (assets.style.length === 0 || /<\/style/i.test(assets.style)) throw new Error("page style unfit to inline")
  return assets
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { script, style } = await bundle()
  writeFileSync(BUILT.script, script)
  writeFileSync(BUILT.style, style)
}
