import { mkdirSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { type BrowserContext, chromium, type Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type App, killAllApps, startApp } from "../support/app.js"
import { CHROMIUM, CHROMIUM_ARGS, requireChromium } from "../support/chromium.js"
import { eventually } from "../support/wait.js"
import { type RedisServer, startRedis } from "../support/redis.js"

/** The poll page in real headless Chromium, against two app processes sharing one redis-server. */

// The browser's globals, for the functions this file sends into the page (the project compiles without the DOM lib).
declare const document: any, window: any, localStorage: any, getComputedStyle: any

// The README's screenshots are refreshed on request (SCREENSHOTS=docs npm test); an ordinary run writes elsewhere,
// so running the tests never changes a committed file.
const DOCS =
  process.env.SCREENSHOTS === "docs" ? join(process.cwd(), "docs") : mkdtempSync(join(tmpdir(), "livepoll-shots-"))
const START_TIMEOUT_MS = 90_000

let redis: RedisServer
/** Serves the page. */
let app: App
/** Another instance on the same Redis: votes cast here must show up live on the page. */
let other: App
let profile: string
let browser: BrowserContext

beforeAll(async () => {
  requireChromium("the page test")
  profile = mkdtempSync(join(tmpdir(), "livepoll-chromium-"))
  redis = await startRedis()
  const env = { POLL_STAGE: "batched", REDIS_URL: redis.url, FLUSH_INTERVAL_MS: "300" }
  ;[app, other, browser] = await Promise.all([
    startApp({ env, readyTimeoutMs: START_TIMEOUT_MS }),
    startApp({ env, readyTimeoutMs: START_TIMEOUT_MS }),
    chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 1,
      colorScheme: "light",
      reducedMotion: "reduce"
    })
  ])
}, START_TIMEOUT_MS + 30_000)

afterAll(async () => {
  await browser?.close()
  await killAllApps()
  await redis?.stop()
  if (profile !== undefined) rmSync(profile, { recursive: true, force: true })
})

/** Organiser keys by poll id, as each 201 showed them. */
const organiserKeys = new Map<string, string>()
const createPoll = async (body: unknown) => {
  const reply = await app.request("POST", "/api/v1/polls", JSON.stringify(body))
  expect(reply.status, reply.text).toBe(201)
  organiserKeys.set(reply.json.id, reply.json.organiser_key)
  return reply.json.id as string
}

const voteThrough = async (server: App, pollId: string, optionId: string, voterId: string) => {
  const reply = await server.request(
    "POST",
    `/api/v1/vote/${pollId}`,
    JSON.stringify({ option_id: optionId, voter_id: voterId })
  )
  expect(reply.status, reply.text).toBe(200)
}

/** What the page shows for one option: its count, percentage and bar width (percent of the track). */
const shown = (page: Page, optionId: string) =>
  page.locator(`li.option[data-option="${optionId}"]`).evaluate((item) => {
    const track = item.querySelector(".track")!.getBoundingClientRect().width
    return {
      count: item.querySelector(".count")!.textContent,
      pct: item.querySelector(".pct")!.textContent,
      bar: Math.round((item.querySelector(".fill")!.getBoundingClientRect().width / track) * 100)
    }
  })

const until = <A>(probe: () => Promise<A>, accept: (a: A) => boolean, what: string, timeoutMs = 5000) => {
  let last: A | undefined
  return eventually(
    async () => {
      last = await probe()
      return accept(last) ? last : undefined
    },
    { timeoutMs, intervalMs: 50, what }
  ).catch((error: Error) => {
    throw new Error(`${error.message}; last seen: ${JSON.stringify(last)}`)
  })
}

const statusText = (page: Page) => page.locator("#status").textContent()

describe("poll page", () => {
  const options = [
    { id: "soup", label: "Tomato soup" },
    { id: "salad", label: "Greek salad" },
    { id: "curry", label: "Vegetable curry" },
    { id: "pasta", label: "Pasta al pesto" }
  ]

  it("votes with a click, shows it in the bar, shows votes from another instance live, and refuses a second vote", async () => {
    const pollId = await createPoll({
      question: "What should we have for lunch on Friday?",
      options,
      one_vote_per_voter: true
    })
    const page = await browser.newPage()
    const errors: Array<string> = []
    page.on("pageerror", (error) => errors.push(error.message))
    page.on("console", (message) => {
      // A refused vote is an HTTP error the page expects and explains; the browser logs it regardless.
      if (message.type() === "error" && !/Failed to load resource: .* 409/.test(message.text())) {
        errors.push(message.text())
      }
    })

    const response = await page.goto(`${app.baseUrl}/polls/${pollId}`)
    expect(response?.status()).toBe(200)
    expect(response?.headers()["content-type"]).toMatch(/^text\/html/)
    await until(
      () => page.locator("h1").textContent(),
      (t) => t === "What should we have for lunch on Friday?",
      "the question"
    )
    expect(await page.title()).toBe("What should we have for lunch on Friday? · livepoll")
    const buttons = page.getByRole("button")
    expect(await buttons.allTextContents()).toEqual(options.map((o) => o.label))
    for (const option of options) expect(await shown(page, option.id)).toEqual({ count: "0", pct: "0%", bar: 0 })
    expect(await page.locator("#total").textContent()).toBe("0 votes")
    expect(await page.locator("#live").textContent()).toBe("Live")

    await page.getByRole("button", { name: "Greek salad" }).click()
    await until(
      () => statusText(page),
      (t) => t === "Vote counted for Greek salad.",
      "the vote confirmation"
    )
    await until(
      () => shown(page, "salad"),
      (s) => s.count === "1",
      "the clicked option's count"
    )
    expect(await shown(page, "salad")).toEqual({ count: "1", pct: "100%", bar: 100 })
    expect(await page.locator("#total").textContent()).toBe("1 vote")
    // The page set a voter cookie; the server recorded that voter.
    expect(await redis.client().scard(`poll:{${pollId}}:voters`)).toBe(1)

    // A vote cast through the other instance appears without any action on the page.
    await voteThrough(other, pollId, "soup", "colleague-1")
    await until(
      () => shown(page, "soup"),
      (s) => s.count === "1",
      "the other instance's vote",
      3000
    )
    expect(await shown(page, "salad")).toEqual({ count: "1", pct: "50%", bar: 50 })
    expect(await shown(page, "soup")).toEqual({ count: "1", pct: "50%", bar: 50 })

    // One vote per voter: the page marks the choice, and the server refuses this browser's second vote even when
    // the page has forgotten it voted.
    expect(await page.locator("li.chosen").getAttribute("data-option")).toBe("salad")
    await page.evaluate(() => localStorage.clear())
    await page.reload()
    await until(
      () => shown(page, "salad"),
      (s) => s.count === "1",
      "the results after reload"
    )
    await page.getByRole("button", { name: "Tomato soup" }).click()
    await until(
      () => statusText(page),
      (t) => t === "You have already voted in this poll.",
      "the refusal"
    )
    await page.waitForTimeout(300)
    expect(await shown(page, "soup")).toEqual({ count: "1", pct: "50%", bar: 50 })
    expect(await page.locator("#status").getAttribute("aria-live")).toBe("polite")
    expect(errors).toEqual([])
    await page.close()
  })

  it("looks right on a phone and on a projector (screenshots in docs/)", async () => {
    const pollId = await createPoll({
      question: "What should we have for lunch on Friday?",
      options,
      one_vote_per_voter: true
    })
    const tally = { soup: 18, salad: 11, curry: 24, pasta: 6 }
    let voter = 0
    await Promise.all(
      Object.entries(tally).flatMap(([option, n]) =>
        Array.from({ length: n }, () => voteThrough(voter % 2 === 0 ? app : other, pollId, option, `v${voter++}`))
      )
    )
    const page = await browser.newPage()
    await page.goto(`${app.baseUrl}/polls/${pollId}`)
    await until(
      () => page.locator("#total").textContent(),
      (t) => t === "59 votes",
      "all votes on the page"
    )
    await page.getByRole("button", { name: "Vegetable curry" }).click()
    await until(
      () => statusText(page),
      (t) => t === "Vote counted for Vegetable curry.",
      "the vote confirmation"
    )
    await until(
      () => page.locator("#total").textContent(),
      (t) => t === "60 votes",
      "the page's own vote"
    )
    expect(await shown(page, "curry")).toEqual({ count: "25", pct: "42%", bar: 42 })
    await page.locator("body").click({ position: { x: 1, y: 1 } })

    mkdirSync(DOCS, { recursive: true })
    const fits = () =>
      page.evaluate(() => ({
        horizontalScroll: document.documentElement.scrollWidth > window.innerWidth,
        verticalScroll: document.documentElement.scrollHeight > window.innerHeight
      }))
    await page.setViewportSize({ width: 360, height: 740 })
    expect((await fits()).horizontalScroll).toBe(false)
    await page.setViewportSize({ width: 390, height: 844 })
    expect(await fits()).toEqual({ horizontalScroll: false, verticalScroll: expect.any(Boolean) })
    await page.screenshot({ path: join(DOCS, "page-phone.png") })

    await page.setViewportSize({ width: 1920, height: 1080 })
    expect(await fits()).toEqual({ horizontalScroll: false, verticalScroll: false })
    // Large type for a room: the question and the counts are readable from the back.
    const sizes = await page.evaluate(() => ({
      question: parseFloat(getComputedStyle(document.querySelector("h1")!).fontSize),
      label: parseFloat(getComputedStyle(document.querySelector(".vote")!).fontSize),
      count: parseFloat(getComputedStyle(document.querySelector(".count")!).fontSize)
    }))
    expect(sizes.question).toBeGreaterThanOrEqual(60)
    expect(sizes.label).toBeGreaterThanOrEqual(28)
    expect(sizes.count).toBeGreaterThanOrEqual(32)
    await page.screenshot({ path: join(DOCS, "page-projector.png") })
    await page.close()
  })

  it("is usable from the keyboard, keeps focus across updates, and shows the poll closing", async () => {
    const pollId = await createPoll({ question: "Ship on Friday?", options: options.slice(0, 2) })
    const page = await browser.newPage()
    await page.goto(`${app.baseUrl}/polls/${pollId}`)
    await until(
      () => page.getByRole("button").count(),
      (n) => n === 2,
      "the buttons"
    )

    await page.keyboard.press("Tab")
    expect(await page.evaluate(() => document.activeElement?.textContent)).toBe("Tomato soup")
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement!).outlineStyle)
    expect(outline).not.toBe("none")
    await page.keyboard.press("Enter")
    await until(
      () => shown(page, "soup"),
      (s) => s.count === "1",
      "the keyboard vote"
    )
    await page.keyboard.press("Enter")
    await until(
      () => shown(page, "soup"),
      (s) => s.count === "2",
      "a second vote (this poll allows it)"
    )
    await voteThrough(other, pollId, "salad", "x")
    await until(
      () => shown(page, "salad"),
      (s) => s.count === "1",
      "the other instance's vote"
    )
    // Updates change the figures in place: the focused button is still the same element.
    expect(await page.evaluate(() => document.activeElement?.textContent)).toBe("Tomato soup")
    expect(await page.getByRole("button", { name: "Tomato soup" }).getAttribute("aria-describedby")).toMatch(/\S/)

    // The exports are offered once the results are final, not before.
    expect(await page.getByRole("link", { name: "CSV" }).isVisible()).toBe(false)
    const authorization = `Bearer ${organiserKeys.get(pollId)}`
    expect((await app.request("POST", `/api/v1/polls/${pollId}/close`, undefined, { authorization })).status).toBe(200)
    await until(
      () => page.locator("#closed").isVisible(),
      (v) => v,
      "the closed banner"
    )
    for (const button of await page.getByRole("button").all()) expect(await button.isDisabled()).toBe(true)
    expect(await page.locator("#live").textContent()).toBe("Final results")
    const links = page.locator("#closed a")
    expect(await links.evaluateAll((as) => as.map((a) => [a.textContent, a.getAttribute("href")]))).toEqual([
      ["CSV", `/api/v1/polls/${pollId}/results.csv`],
      ["JSON", `/api/v1/polls/${pollId}/results.json`]
    ])
    for (const link of await links.all()) expect(await link.isVisible()).toBe(true)
    // Each link is the final count, from the page's own origin (its policy lets it read only that).
    const exported = await page.evaluate(
      async (href) => (await fetch(href)).json(),
      `/api/v1/polls/${pollId}/results.json`
    )
    expect(exported).toMatchObject({ final: true, total_votes: 3, results: [{ votes: 2 }, { votes: 1 }] })
    const download = page.waitForEvent("download")
    await page.getByRole("link", { name: "CSV" }).click()
    expect((await download).suggestedFilename()).toBe(`${pollId}-results.csv`)
    await page.close()
  })

  it("renders text from the data as text, never as markup", async () => {
    const hostile = '<img src=x onerror="window.__owned=1"><script>window.__owned=2</script>'
    const pollId = await createPoll({
      question: hostile,
      options: [
        { id: "a", label: '<b>bold</b> & "quoted"' },
        { id: "b", label: "</li><li>fake</li>" }
      ]
    })
    const page = await browser.newPage()
    await page.goto(`${app.baseUrl}/polls/${pollId}`)
    await until(
      () => page.locator("h1").textContent(),
      (t) => t === hostile,
      "the question"
    )
    expect(await page.getByRole("button").allTextContents()).toEqual(['<b>bold</b> & "quoted"', "</li><li>fake</li>"])
    expect(await page.evaluate(() => (window as unknown as { __owned?: number }).__owned)).toBeUndefined()
    expect(await page.locator("main img, main b, main script").count()).toBe(0)
    expect(await page.locator("li.option").count()).toBe(2)
    await page.close()
  })

  it("shows an ad-hoc poll's options from its results", async () => {
    const pollId = `adhoc-${process.pid}`
    for (const option of ["red", "green", "red"]) expect((await other.vote(pollId, option)).status).toBe(200)
    const page = await browser.newPage()
    await page.goto(`${app.baseUrl}/polls/${pollId}`)
    await until(
      () => page.locator("#total").textContent(),
      (t) => t === "3 votes",
      "the ad-hoc results"
    )
    expect(await page.locator("h1").textContent()).toBe(`Poll ${pollId}`)
    expect(await shown(page, "red")).toEqual({ count: "2", pct: "67%", bar: 67 })
    await page.getByRole("button", { name: "green" }).click()
    await until(
      () => shown(page, "green"),
      (s) => s.count === "2",
      "the ad-hoc vote"
    )
    await page.close()
  })
})
