/**
 * `npm run dev -- --cluster` as a user runs it: the script in a process of its own, Ctrl-C as SIGINT, here on free
 * ports (`DEV_CLUSTER_PORTS`, `PORT`) and a temporary data directory (`DEV_DATA_DIR`). The runs follow each other
 * on the same directory: the second finds the cluster the first created.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Cluster as ClusterClient } from "ioredis"
import { afterAll, describe, expect, it } from "vitest"
import * as Cluster from "../scripts/cluster.js"
import { ask } from "../scripts/redis.js"
import { freeNodePorts } from "./support/cluster.js"
import { freePort } from "./support/redis.js"
import { eventually, sleep } from "./support/wait.js"

// Every process a run starts inherits this; redis-server, which writes its title over its environment, is found by
// its port instead.
const MARKER = "LIVEPOLL_DEV_TEST_RUN"

interface Run {
  readonly child: ChildProcess
  readonly marker: string
  readonly output: () => string
  readonly exited: Promise<number | null>
}

const runs: Array<Run> = []
const dirs: Array<string> = []
const tempDir = () => {
  const dir = mkdtempSync(join(tmpdir(), "livepoll-dev-test-"))
  dirs.push(dir)
  return dir
}

/** The script with `--cluster`, the environment given over the test's own (minus what would pick the app's stage). */
const dev = (env: Record<string, string>): Run => {
  const marker = randomUUID()
  const base = { ...process.env }
  for (const name of ["POLL_STAGE", "REDIS_CLUSTER", "REDIS_WAIT_REPLICAS", "DEV_CLUSTER_PORTS", "DEV_DATA_DIR"])
    delete base[name]
  const child = spawn(process.execPath, ["--import", "tsx", "scripts/dev.ts", "--cluster"], {
    env: { ...base, [MARKER]: marker, ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let output = ""
  child.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString()))
  child.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString()))
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
  const run = { child, marker, output: () => output, exited }
  runs.push(run)
  return run
}

/** Until the run prints a line matching `pattern`; fails if it exits first. */
const line = async (run: Run, pattern: RegExp, timeoutMs = 30_000): Promise<RegExpExecArray> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const found = pattern.exec(run.output())
    if (found !== null) return found
    if (run.child.exitCode !== null) expect.fail(`exited (${run.child.exitCode}) before ${pattern}:\n${run.output()}`)
    if (Date.now() > deadline) expect.fail(`no ${pattern} within ${timeoutMs} ms:\n${run.output()}`)
    await sleep(50)
  }
}

/** The processes of a run still alive (the app among them), by the marker in their environment. */
const marked = (marker: string) =>
  readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").includes(`${MARKER}=${marker}`)
      } catch {
        return false
      }
    })

/** redis-server processes serving one of these ports, by the title redis-server gives itself. */
const redisServers = (ports: ReadonlyArray<number>) =>
  readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        const title = readFileSync(`/proc/${pid}/cmdline`, "utf8")
        return title.startsWith("redis-server") && ports.some((port) => new RegExp(`:${port}\\b`).test(title))
      } catch {
        return false
      }
    })

/** Ctrl-C; resolves with the exit code. */
const interrupt = async (run: Run) => {
  run.child.kill("SIGINT")
  return Promise.race([run.exited, sleep(30_000).then(() => "still running")])
}

/** Runs `body` on a run, and stops the run if `body` fails half-way, so the next test finds the ports free. */
const during = async (run: Run, body: () => Promise<void>) => {
  try {
    await body()
  } finally {
    if (run.child.exitCode === null && run.child.signalCode === null) await interrupt(run)
  }
}

const kill = (pid: string) => {
  try {
    process.kill(Number(pid), "SIGKILL")
  } catch {
    // gone meanwhile
  }
}

const ports = await freeNodePorts(6)
const dataDir = tempDir()
const clusterDir = (port: number) => join(dataDir, "cluster", String(port))

afterAll(async () => {
  // A run a failed test left going gets Ctrl-C; whatever of it is still alive after that is killed by its id.
  for (const run of runs) {
    if (run.child.exitCode === null && run.child.signalCode === null) await interrupt(run)
    marked(run.marker).forEach(kill)
  }
  redisServers(ports).forEach(kill)
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
}, 60_000)

interface Node {
  readonly id: string
  readonly port: number
  readonly master: boolean
  /** The id of the master a replica follows. */
  readonly follows: string
  readonly slots: number
}

/** The cluster as the node on `port` sees it. */
const clusterNodes = async (port: number): Promise<Array<Node>> =>
  ((await ask(port, (c) => c.call("CLUSTER", "NODES") as Promise<string>)) ?? "")
    .trim()
    .split("\n")
    .map((text) => text.split(" "))
    .map(([id, address, flags, follows, , , , , ...slots]) => ({
      id: id!,
      port: Number(/:(\d+)@/.exec(address!)?.[1]),
      master: flags!.includes("master"),
      follows: follows!,
      slots: slots.reduce((n, range) => {
        const [first, last] = range.split("-").map(Number)
        return n + (last ?? first!) - first! + 1
      }, 0)
    }))

/** What must hold of a started cluster: every node says ok, and 3 masters with every slot, each with its replica. */
const expectReadyCluster = async () => {
  for (const port of ports) {
    const info = await ask(port, (c) => c.call("CLUSTER", "INFO") as Promise<string>)
    expect(info, `:${port}`).toContain("cluster_state:ok")
    expect(info, `:${port}`).toContain(`cluster_known_nodes:${ports.length}`)
  }
  const nodes = await clusterNodes(ports[0]!)
  expect(nodes.map((n) => n.port).sort()).toEqual([...ports].sort())
  const masters = nodes.filter((n) => n.master)
  expect(masters).toHaveLength(3)
  expect(masters.reduce((n, m) => n + m.slots, 0)).toBe(16_384)
  const replicas = nodes.filter((n) => !n.master)
  expect(replicas.map((r) => r.follows).sort()).toEqual(masters.map((m) => m.id).sort())
  // In sync, not merely listed: the app's WAIT counts only those.
  for (const master of masters) {
    expect(await ask(master.port, (c) => c.info("replication"))).toMatch(/state=online/)
  }
}

const nodeIds = async () => Promise.all(ports.map((port) => ask(port, (c) => c.call("CLUSTER", "MYID"))))

/** After a run exits: nothing of it runs, nothing answers on its ports. */
const expectAllStopped = async (run: Run) => {
  expect(marked(run.marker)).toEqual([])
  expect(redisServers(ports)).toEqual([])
  for (const port of ports) expect(await ask(port, (c) => c.ping()), `:${port}`).toBeUndefined()
}

const KEY = "dev-test:{kept}"

describe("npm run dev -- --cluster", () => {
  let ids: Array<unknown> = []
  let appPort = 0
  const env = () => ({ DEV_CLUSTER_PORTS: ports.join(","), DEV_DATA_DIR: dataDir, PORT: String(appPort) })

  it("creates 3 masters + 3 replicas under the data dir, the app on them in the cluster stage; Ctrl-C stops all", async () => {
    appPort = await freePort()
    const run = dev(env())
    await during(run, async () => {
      const [, app] = await line(run, /starting the app: (.*)$/m, 45_000)
      expect(run.output()).toContain("creating the cluster")
      await expectReadyCluster()
      for (const port of ports) {
        expect(existsSync(join(clusterDir(port), "nodes.conf")), `nodes.conf of :${port}`).toBe(true)
        expect(existsSync(join(clusterDir(port), "appendonlydir")), `append-only file of :${port}`).toBe(true)
      }
      expect(app!.split(" ")).toEqual([
        "POLL_STAGE=cluster",
        `PORT=${appPort}`,
        `REDIS_CLUSTER=${ports.map((port) => `redis://127.0.0.1:${port}`).join(",")}`,
        "REDIS_WAIT_REPLICAS=1"
      ])
      ids = await nodeIds()
      // The app serves the cluster stage; its vote is buffered, and Ctrl-C's final flush takes it to the cluster.
      await eventually(
        async () => {
          const health = await fetch(`http://127.0.0.1:${appPort}/api/v1/health`).catch(() => undefined)
          return health?.status === 200 ? true : undefined
        },
        { timeoutMs: 45_000, what: "the app healthy on the cluster" }
      )
      const voted = await fetch(`http://127.0.0.1:${appPort}/api/v1/vote/dev-cluster`, {
        method: "POST",
        body: JSON.stringify({ option_id: "A" })
      })
      expect(voted.status).toBe(200)
      const client = new ClusterClient([{ host: "127.0.0.1", port: ports[0]! }])
      try {
        await client.set(KEY, "kept")
      } finally {
        client.disconnect()
      }
      expect(await interrupt(run), run.output()).toBe(0)
      expect(run.output()).toMatch(/SIGINT: stopping the app[\s\S]*\[dev\] stopped\s*$/)
    })
    await expectAllStopped(run)
  }, 90_000)

  it("starts the same nodes again from their data on the next run, and stops all on Ctrl-C", async () => {
    const run = dev(env())
    await during(run, async () => {
      await line(run, /starting the app: POLL_STAGE=cluster /, 45_000)
      expect(run.output()).toContain("holds a cluster of these ports: starting the same nodes again")
      expect(run.output()).not.toContain("creating the cluster")
      await expectReadyCluster()
      expect(await nodeIds()).toEqual(ids)
      const client = new ClusterClient([{ host: "127.0.0.1", port: ports[1]! }])
      try {
        expect(await client.get(KEY)).toBe("kept")
        // The vote of the first run, flushed as it stopped, with the replica's WAIT.
        expect(await client.hgetall("poll:{dev-cluster}:counts")).toEqual({ A: "1" })
      } finally {
        client.disconnect()
      }
      expect(await interrupt(run), run.output()).toBe(0)
    })
    await expectAllStopped(run)
  }, 90_000)

  it("refuses a data dir that holds only part of a cluster, and starts nothing", async () => {
    rmSync(clusterDir(ports.at(-1)!), { recursive: true })
    const run = dev(env())
    await during(run, async () => {
      expect(await run.exited, run.output()).toBe(1)
      expect(run.output()).toContain(`${join(dataDir, "cluster")} holds part of a cluster`)
      expect(run.output()).toContain(`:${ports.at(-1)} did not`)
      expect(run.output()).not.toContain("started redis-server")
    })
    await expectAllStopped(run)
  })

  it("says how to get redis-server when it is not installed, and runs the in-memory stage", async () => {
    const run = dev({ PATH: tempDir(), DEV_DATA_DIR: tempDir(), PORT: String(await freePort()) })
    await during(run, async () => {
      await line(run, /starting the app: POLL_STAGE=memory /)
      expect(run.output()).toContain("redis-server is not on the PATH")
      expect(run.output()).toContain("sudo apt-get install redis-server")
      expect(await interrupt(run), run.output()).toBe(0)
    })
    expect(marked(run.marker)).toEqual([])
  })
})

describe("DEV_CLUSTER_PORTS", () => {
  it("is 7100-7105 when unset, clear of the shards' 7000 and 7001", () => {
    expect(Cluster.parsePorts(undefined)).toEqual([7100, 7101, 7102, 7103, 7104, 7105])
  })

  it("takes a master and a replica for each pair of ports, at least three masters", () => {
    expect(Cluster.parsePorts("7200, 7201,7202,7203,7204,7205,7206,7207")).toHaveLength(8)
    expect(Cluster.parsePorts("7200,7201,7202,7203")).toMatch(/at least 6 ports/)
    expect(Cluster.parsePorts("7200,7201,7202,7203,7204,7205,7206")).toMatch(/a multiple of 2/)
  })

  it("refuses what is not a port, a port twice, and a port on another node's bus", () => {
    expect(Cluster.parsePorts("7200,7201,7202,7203,7204,x")).toMatch(/must be ports/)
    expect(Cluster.parsePorts("60000,7201,7202,7203,7204,7205")).toMatch(/up to 55535/)
    expect(Cluster.parsePorts("7200,7200,7202,7203,7204,7205")).toMatch(/distinct/)
    expect(Cluster.parsePorts("7200,17200,7202,7203,7204,7205")).toMatch(/distinct/)
  })
})

describe("the cluster's data dir", () => {
  const PORTS = [7200, 7201, 7202, 7203, 7204, 7205]
  /** Node directories whose nodes.conf lists these ports (the node itself first); none for an empty list. */
  const nodesIn = (listed: (port: number) => ReadonlyArray<number>) => {
    const dir = tempDir()
    return PORTS.map((port) => {
      const nodeDir = join(dir, String(port))
      mkdirSync(nodeDir)
      const lines = listed(port).map(
        (p, i) => `id${p} 127.0.0.1:${p}@${p + 10_000} ${i === 0 ? "myself," : ""}master - 0 0 0 connected`
      )
      if (lines.length > 0)
        writeFileSync(join(nodeDir, "nodes.conf"), [...lines, "vars currentEpoch 0 lastVoteEpoch 0"].join("\n"))
      return { port, dir: nodeDir }
    })
  }

  it("needs a new cluster when no node has joined one (no nodes.conf, or one that lists only the node)", () => {
    expect(
      Cluster.onDisk(
        nodesIn(() => []),
        "d"
      )
    ).toBe("new")
    expect(
      Cluster.onDisk(
        nodesIn((port) => [port]),
        "d"
      )
    ).toBe("new")
  })

  it("starts the same nodes again when every node lists exactly these ports", () => {
    expect(
      Cluster.onDisk(
        nodesIn((port) => [port, ...PORTS.filter((p) => p !== port)]),
        "d"
      )
    ).toBe("formed")
  })

  it("refuses a cluster of other ports, naming them", () => {
    const other = [7200, 7201, 7202, 7203, 7204, 7299]
    expect(
      Cluster.onDisk(
        nodesIn((port) => [port, ...other.filter((p) => p !== port)]),
        "d"
      )
    ).toEqual({
      unusable: expect.stringContaining(
        "d holds a cluster of 7200,7201,7202,7203,7204,7299, not of 7200,7201,7202,7203,7204,7205: " +
          "run with DEV_CLUSTER_PORTS=7200,7201,7202,7203,7204,7299"
      )
    })
  })
})
