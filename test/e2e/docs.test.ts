import { type Browser, chromium } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { document } from "../../src/Http/OpenApi.js"
import { type App, killAllApps, startApp } from "../support/app.js"
import { CHROMIUM, CHROMIUM_ARGS, requireChromium } from "../support/chromium.js"

/** The API documentation page (`GET /docs`) in real headless Chromium, under the policy it is served with. */

let app: App
let browser: Browser

beforeAll(async () => {
  requireChromium("the docs page test")
  ;[app, browser] = await Promise.all([
    startApp({ env: { POLL_STAGE: "memory" } }),
    chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS })
  ])
}, 90_000)

afterAll(async () => {
  await browser?.close()
  await killAllApps()
})

describe("the docs page", () => {
  it("renders every operation, loading nothing but its own server's files, within its policy", async () => {
    const page = await browser.newPage()
    const complaints: Array<string> = []
    const requested: Array<string> = []
    page.on("console", (message) => {
      // A blocked load or script is reported on the console (a policy violation among them).
      if (message.type() === "error" || message.type() === "warning") complaints.push(message.text())
    })
    page.on("pageerror", (error) => complaints.push(error.message))
    page.on("request", (request) => requested.push(request.url()))

    await page.goto(`${app.baseUrl}/docs`)
    await page.locator(".opblock").first().waitFor({ timeout: 30_000 })
    const operations = Object.values(document.paths).flatMap((item) => Object.keys(item)).length
    expect(await page.locator(".opblock").count()).toBe(operations)
    await expect(page.locator(".info .title").textContent()).resolves.toContain("livepoll")

    // An operation opens with its answers, the refusals' codes among them.
    await page.locator("#operations-votes-vote .opblock-summary").click()
    await page.locator("#operations-votes-vote .responses-table").first().waitFor()
    await expect(page.locator("#operations-votes-vote").textContent()).resolves.toContain("unknown_option")

    expect(complaints).toEqual([])
    expect(requested.filter((url) => !url.startsWith(`${app.baseUrl}/`))).toEqual([])
    expect(requested).toEqual(
      expect.arrayContaining([
        `${app.baseUrl}/docs/swagger-ui.js`,
        `${app.baseUrl}/docs/swagger-ui.css`,
        `${app.baseUrl}/api/v1/openapi.json`
      ])
    )
    await page.close()
  }, 60_000)
})
