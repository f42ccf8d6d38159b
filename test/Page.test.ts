import { createHash } from "node:crypto"
import { describe, expect, it } from "vitest"
import * as Page from "../src/Page.js"

const sha256 = (text: string) => createHash("sha256").update(text, "utf8").digest("base64")

const parts = (html: string) => ({
  policy: /<meta http-equiv="Content-Security-Policy" content="([^"]*)">/.exec(html)?.[1] ?? "",
  scripts: [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => m[1] ?? ""),
  styles: [...html.matchAll(/<style>([\s\S]*?)<\/style>/g)].map((m) => m[1] ?? "")
})

describe("the page document", () => {
  it("inlines one script and one style, and its policy allows exactly those bytes", () => {
    const { policy, scripts, styles } = parts(Page.render("lunch"))
    expect(scripts).toHaveLength(1)
    expect(styles).toHaveLength(1)
    const [script, style] = [scripts[0]!, styles[0]!]
    // The bundle of src/Page/script.ts and style.css: code that draws the results stream, rules for the options.
    expect(script).toContain("EventSource")
    expect(style).toContain(".option")
    const directives = new Map(
      policy.split("; ").map((d) => [d.slice(0, d.indexOf(" ")), d.slice(d.indexOf(" ") + 1)] as const)
    )
    expect(directives.get("script-src")).toBe(`'sha256-${sha256(script)}'`)
    expect(directives.get("style-src")).toBe(`'sha256-${sha256(style)}'`)
    expect(directives.get("default-src")).toBe("'none'")
  })

  it("is the same document for every poll but for the escaped id", () => {
    const a = Page.render("a")
    const b = Page.render("b")
    expect(parts(a).policy).toBe(parts(b).policy)
    expect(Page.render("x<y")).toContain('data-poll-id="x&lt;y"')
  })
})
