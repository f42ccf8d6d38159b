import { existsSync } from "node:fs"

/**
 * The Chromium the browser tests drive: Debian's chromium package by default; CHROMIUM_PATH names another Chromium
 * binary (on macOS, for instance, "/Applications/Chromium.app/Contents/MacOS/Chromium").
 */
export const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium"

/** Headless, and quiet: nothing of the browser's own reaches the network, so a test sees only the page's requests. */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--no-first-run",
  "--disable-sync",
  "--disable-quic"
]

/** Fails with how to get Chromium when it is missing; `what` names the test that drives it. */
export const requireChromium = (what: string) => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `${CHROMIUM} is missing: ${what} drives Chromium. Install Debian's chromium package ` +
        `(apt-get install -y chromium), or set CHROMIUM_PATH to the path of another Chromium binary`
    )
  }
}
