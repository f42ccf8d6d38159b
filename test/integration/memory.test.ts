import { afterAll, describe, expect, it } from "vitest"
import { killAllApps, startApp } from "../support/app.js"

afterAll(killAllApps)

describe("memory stage", () => {
  it("counts votes per option, serves them in_memory, and forgets them on restart", async () => {
    const first = await startApp({ env: { POLL_STAGE: "memory" } })
    const votes = ["A", "B", "A", "C", "A", "B"]
    for (const option of votes) {
      const reply = await first.vote("m-1", option)
      expect(reply.status).toBe(200)
      expect(reply.json).toEqual({ poll_id: "m-1", option_id: option })
    }
    await first.vote("m-2", "A")

    const results = await first.results("m-1")
    expect(results.status).toBe(200)
    expect(results.json).toEqual({ poll_id: "m-1", results: { A: 3, B: 2, C: 1 }, served_via: "in_memory" })
    expect((await first.results("m-2")).json.results).toEqual({ A: 1 })
    expect((await first.results("m-never")).json).toEqual({ poll_id: "m-never", results: {}, served_via: "in_memory" })
    expect(await first.stop()).toBe(0)

    const second = await startApp({ env: { POLL_STAGE: "memory" } })
    expect((await second.results("m-1")).json).toEqual({ poll_id: "m-1", results: {}, served_via: "in_memory" })
    expect((await second.results("m-2")).json.results).toEqual({})
    expect(await second.stop()).toBe(0)
  })
})
