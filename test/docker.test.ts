/**
 * Docker cannot run where the tests run, so docker-compose.yml, docker-compose.cluster.yml, the Dockerfile and
 * .dockerignore are checked statically: what `docker compose up --build` would start, against the contract and
 * against the app's own config. nginx's config (deploy/nginx.conf) is checked by `nginx -t` too.
 */
import { Effect, Either, ConfigProvider } from "effect"
import { execFile, execFileSync } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { parse } from "yaml"
import * as Cluster from "../scripts/cluster.js"
import { AppConfig, parseRedisNodes, parseSeeds } from "../src/Config.js"
import { executable } from "./support/balancer.js"
import { freePort } from "./support/redis.js"

const read = (path: string) => readFileSync(new URL(`../${path}`, import.meta.url), "utf8")
const exists = (path: string) => existsSync(new URL(`../${path}`, import.meta.url))

// ---------------------------------------------------------------------------------------------------------------------
// docker-compose.yml

interface Service {
  readonly image?: string
  readonly build?: unknown
  readonly command?: string | ReadonlyArray<string>
  readonly ports?: ReadonlyArray<string | number>
  readonly environment?: Readonly<Record<string, unknown>> | ReadonlyArray<string>
  readonly depends_on?: ReadonlyArray<string> | Readonly<Record<string, { readonly condition?: string }>>
  readonly healthcheck?: { readonly test?: string | ReadonlyArray<string> }
  readonly volumes?: ReadonlyArray<string | { readonly target?: string }>
  readonly deploy?: { readonly replicas?: number }
  readonly expose?: ReadonlyArray<string | number>
  readonly container_name?: string
}

const compose = parse(read("docker-compose.yml")) as {
  services: Record<string, Service>
  volumes?: Record<string, unknown>
}
const services = compose.services

/** `environment` as a map, whether written as a map or as a list of `KEY=VALUE`. */
const environmentOf = (service: Service): Record<string, string> => {
  const env = service.environment ?? {}
  if (Array.isArray(env)) {
    return Object.fromEntries(
      env.map((entry: string) => [entry.slice(0, entry.indexOf("=")), entry.slice(entry.indexOf("=") + 1)])
    )
  }
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, String(v)]))
}

/** A command or healthcheck test as words; the `CMD`/`CMD-SHELL` marker of the list form is dropped. */
const words = (command: string | ReadonlyArray<string> | undefined): Array<string> => {
  if (command === undefined) return []
  const list = typeof command === "string" ? command.trim().split(/\s+/) : [...command]
  const [first, ...rest] = list
  if (first === "CMD") return rest
  if (first === "CMD-SHELL") return rest.join(" ").trim().split(/\s+/)
  return list
}

/** The value after `--flag` in a command line. */
const flag = (command: ReadonlyArray<string>, name: string) => {
  const at = command.indexOf(name)
  return at === -1 ? undefined : command[at + 1]
}

/** Both compose files build the app the same way. */
const itBuildsTheAppHere = (app: Service) =>
  it("builds the app from this directory", () => {
    const context = typeof app.build === "string" ? app.build : (app.build as { context?: string } | undefined)?.context
    expect(context).toBe(".")
  })

const itPublishes8000 = (service: Service) =>
  it("publishes 8000 on 8000", () => {
    expect((service.ports ?? []).map(String)).toContain("8000:8000")
  })

/** What every Redis service of both compose files is: Redis 7 on `port`, published on it, healthy once it answers. */
const itIsARedisOn = (node: Service, port: number) => {
  it("is Redis 7", () => {
    expect(node.image).toMatch(/^redis:7(\.|-|$)/)
  })

  it(`publishes ${port} on the same port`, () => {
    expect((node.ports ?? []).map(String)).toContain(`${port}:${port}`)
  })

  it(`is healthy when redis-cli gets a PING answer on ${port}`, () => {
    const test = words(node.healthcheck?.test)
    expect(test[0]).toBe("redis-cli")
    expect(flag(test, "-p")).toBe(String(port))
    expect(test).toContain("ping")
  })
}

const REDIS_NODES = [
  { service: "redis-node-1", port: 7000, name: "redis_7000" },
  { service: "redis-node-2", port: 7001, name: "redis_7001" }
] as const

describe("docker-compose.yml", () => {
  it("has exactly nginx, the app and the two Redis shards", () => {
    expect(Object.keys(services).sort()).toEqual(["app", "nginx", "redis-node-1", "redis-node-2"])
  })

  itBuildsTheAppHere(services.app!)

  it("runs the app with every layer on, over both shards by their service names", () => {
    const env = environmentOf(services.app!)
    expect(env.POLL_STAGE).toBe("full")
    const parsed = parseRedisNodes(env.REDIS_NODES ?? "")
    if (Either.isLeft(parsed)) expect.fail(`REDIS_NODES is rejected by the app's config: ${parsed.left}`)
    const nodes = parsed.right.map((n) => ({
      name: n.name,
      host: new URL(n.url).hostname,
      port: Number(new URL(n.url).port)
    }))
    expect(nodes).toEqual(REDIS_NODES.map((n) => ({ name: n.name, host: n.service, port: n.port })))
  })

  it("names the shards as `npm run dev` does, so each poll lands on the same shard in both setups", () => {
    const local = parseRedisNodes("redis://127.0.0.1:7000,redis://127.0.0.1:7001")
    const docker = parseRedisNodes(environmentOf(services.app!).REDIS_NODES ?? "")
    if (Either.isLeft(local) || Either.isLeft(docker)) return expect.fail("REDIS_NODES did not parse")
    expect(docker.right.map((n) => n.name)).toEqual(local.right.map((n) => n.name))
  })

  it("starts the app only once both shards are healthy", () => {
    const dependsOn = services.app!.depends_on
    expect(dependsOn).toBeTypeOf("object")
    expect(Array.isArray(dependsOn)).toBe(false)
    for (const { service } of REDIS_NODES) {
      expect((dependsOn as Record<string, { condition?: string }>)[service]?.condition).toBe("service_healthy")
    }
  })

  it("runs the app as three replicas that publish no port of their own, named by compose", () => {
    const app = services.app!
    expect(app.deploy?.replicas).toBe(3)
    // Three containers cannot publish one host port, nor share one name.
    expect(app.ports ?? []).toEqual([])
    expect(app.container_name).toBeUndefined()
    expect((app.expose ?? []).map(String)).toContain("8000")
  })

  it("gives the app an environment its own config accepts, trusting the one proxy in front of it", () => {
    const env = environmentOf(services.app!)
    const config = Effect.runSync(
      Effect.withConfigProvider(AppConfig, ConfigProvider.fromMap(new Map(Object.entries(env))))
    )
    expect(config.port).toBe(8000)
    expect(config.trustProxy).toBe(1)
  })

  it("calls the app healthy once GET / answers 200 on 8000, with what its image has (node, no curl)", () => {
    const test = services.app!.healthcheck?.test
    expect(Array.isArray(test) ? test.slice(0, 3) : test).toEqual(["CMD", "node", "-e"])
    expect(words(test)).toHaveLength(3)
    expect((test as ReadonlyArray<string>)[3]).toContain("'http://127.0.0.1:8000/'")
  })

  it("the app's health check exits 0 when GET / answers 200, and 1 when it answers otherwise or nothing listens", async () => {
    const script = (services.app!.healthcheck!.test as ReadonlyArray<string>)[3]!
    const check = (port: number) =>
      new Promise<number>((resolve) => {
        const child = execFile(process.execPath, ["-e", script.replace("127.0.0.1:8000", `127.0.0.1:${port}`)])
        child.on("exit", (code) => resolve(code ?? -1))
      })
    for (const status of [200, 503]) {
      const server = createServer((_, res) => res.writeHead(status).end())
      const port = await freePort()
      await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve))
      try {
        expect(await check(port), `GET / answered ${status}`).toBe(status === 200 ? 0 : 1)
      } finally {
        await new Promise((resolve) => server.close(resolve))
      }
    }
    expect(await check(await freePort())).toBe(1)
  })

  describe("nginx", () => {
    const nginx = services.nginx!

    itPublishes8000(nginx)

    it("is the only service that publishes 8000", () => {
      for (const [name, service] of Object.entries(services).filter(([name]) => name !== "nginx")) {
        const published = (service.ports ?? []).map((p) => String(p).split(":")[0])
        expect(published, name).not.toContain("8000")
      }
    })

    it("is nginx 1.x with deploy/nginx.conf as its whole config, read-only", () => {
      expect(nginx.image).toMatch(/^nginx:1\.\d+(\.\d+)?(-[a-z]+)?$/)
      expect(nginx.volumes).toContain("./deploy/nginx.conf:/etc/nginx/nginx.conf:ro")
      expect(exists("deploy/nginx.conf")).toBe(true)
    })

    it("starts once the app is healthy: it resolves the replicas' addresses when it starts", () => {
      const dependsOn = nginx.depends_on as Record<string, { condition?: string }>
      expect(dependsOn.app?.condition).toBe("service_healthy")
    })
  })

  for (const { service, port } of REDIS_NODES) {
    describe(service, () => {
      const node = services[service]!

      itIsARedisOn(node, port)

      it(`listens on ${port} inside the container too, with the append-only file on`, () => {
        const command = words(node.command)
        expect(command[0]).toBe("redis-server")
        expect(flag(command, "--port")).toBe(String(port))
        expect(flag(command, "--appendonly")).toBe("yes")
      })

      it("keeps its data in a volume mounted on /data", () => {
        const targets = (node.volumes ?? []).map((v) => (typeof v === "string" ? v.split(":")[1] : v.target))
        expect(targets).toContain("/data")
        const named = (node.volumes ?? []).flatMap((v) => (typeof v === "string" ? [v.split(":")[0]!] : []))
        for (const name of named.filter((n) => !n.startsWith(".") && !n.startsWith("/"))) {
          expect(Object.keys(compose.volumes ?? {})).toContain(name)
        }
      })
    })
  }
})

// ---------------------------------------------------------------------------------------------------------------------
// deploy/nginx.conf

/** Its directives (comments dropped), each as words, with the names of the blocks it is in. */
const directives = (text: string) => {
  const found: Array<{ readonly words: ReadonlyArray<string>; readonly within: ReadonlyArray<string> }> = []
  const within: Array<string> = []
  // Quoted strings hold no `{`, `}` or `;` here but JSON; they are kept whole.
  const tokens = text.replace(/#.*$/gm, "").match(/'[^']*'|"[^"]*"|[{};]|[^\s{};]+/g) ?? []
  let words: Array<string> = []
  for (const token of tokens) {
    if (token === "{") {
      within.push(words.join(" "))
      words = []
    } else if (token === "}") within.pop()
    else if (token === ";") {
      found.push({ words, within: [...within] })
      words = []
    } else words.push(token)
  }
  return found
}

describe("deploy/nginx.conf", () => {
  const text = read("deploy/nginx.conf")
  const all = directives(text)
  const named = (name: string) => all.filter((d) => d.words[0] === name)
  const block = all.find((d) => d.within.at(-1)?.startsWith("upstream "))?.within.at(-1)
  const upstream = block?.split(" ")[1]

  it("listens on 8000, the port compose publishes", () => {
    expect(named("listen").map((d) => d.words.slice(1))).toEqual([["8000"]])
  })

  it("passes every request to an upstream of the app service on the port the app listens on", () => {
    expect(upstream).toBeDefined()
    const servers = all.filter((d) => d.within.at(-1) === `upstream ${upstream}` && d.words[0] === "server")
    expect(servers.map((d) => d.words[1])).toEqual(["app:8000"])
    expect(all.filter((d) => d.words[0] === "proxy_pass").map((d) => [d.within.at(-1), d.words[1]])).toEqual([
      ["location /", `http://${upstream}`]
    ])
  })

  it("passes a request to another replica only when it never reached one: a vote that was sent is never sent twice", () => {
    const nextUpstream = named("proxy_next_upstream").flatMap((d) => d.words.slice(1))
    expect(nextUpstream).toContain("error")
    expect(nextUpstream).not.toContain("non_idempotent")
    // A kept-alive connection the replica closes under a vote just sent on it would be a 502 for a vote never counted.
    expect(named("keepalive")).toEqual([])
  })

  it("appends the client's address to X-Forwarded-For, the one entry TRUST_PROXY=1 reads", () => {
    expect(named("proxy_set_header").map((d) => d.words.slice(1))).toContainEqual([
      "X-Forwarded-For",
      "$proxy_add_x_forwarded_for"
    ])
  })

  it("answers what it cannot pass on as JSON marked as its own, 502: maybe counted, never 503 (not counted)", () => {
    const returns = named("return")
    expect(returns.length).toBeGreaterThan(0)
    for (const r of returns) {
      expect(r.words[1]).toBe("502")
      const body = JSON.parse(r.words[2]!.slice(1, -1)) as { error?: string; message?: string }
      expect(body.error).toMatch(/^[a-z_]+$/)
      expect(body.message).toBeTypeOf("string")
    }
    expect(named("add_header").map((d) => d.words.slice(1))).toContainEqual(["X-Balancer", "nginx", "always"])
    expect(named("error_page").flatMap((d) => d.words.slice(1))).toEqual(expect.arrayContaining(["502", "504"]))
  })

  it("passes `nginx -t`, with `app` resolvable", () => {
    const dir = mkdtempSync(join(tmpdir(), "livepoll-nginx-t-"))
    try {
      // Outside compose `app` resolves to nothing; any address stands in for it.
      writeFileSync(join(dir, "nginx.conf"), text.replace(/server app:8000\b/, "server 127.0.0.1:8000"))
      const args = ["-t", "-q", "-p", dir, "-c", join(dir, "nginx.conf"), "-e", "stderr", "-g", `pid ${dir}/nginx.pid;`]
      execFileSync(executable("nginx"), args, { stdio: "pipe" })
    } catch (error) {
      const stderr = (error as { stderr?: Buffer }).stderr?.toString() ?? String(error)
      expect.fail(`nginx -t rejected deploy/nginx.conf:\n${stderr}`)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})

// ---------------------------------------------------------------------------------------------------------------------
// docker-compose.cluster.yml

interface ClusterService extends Service {
  readonly networks?: ReadonlyArray<string> | Readonly<Record<string, { readonly ipv4_address?: string } | null>>
  readonly restart?: string
}

const clusterCompose = parse(read("docker-compose.cluster.yml")) as {
  name?: string
  services: Record<string, ClusterService>
  networks?: Record<string, { ipam?: { config?: ReadonlyArray<{ subnet?: string; ip_range?: string }> } }>
  volumes?: Record<string, unknown>
}
const clusterServices = clusterCompose.services

/** Compose reads `$$` as a literal `$`; a lone `$` would be a variable of the host's environment. */
const interpolated = (text: string) => text.replaceAll("$$", "$")

const ipv4 = (address: string) => address.split(".").reduce((n, part) => n * 256 + Number(part), 0)
/** Whether `address` lies inside `cidr` (`a.b.c.d/len`). */
const inside = (address: string, cidr: string) => {
  const [base, length] = cidr.split("/")
  const size = 2 ** (32 - Number(length))
  return Math.floor(ipv4(address) / size) === Math.floor(ipv4(base!) / size)
}

const CLUSTER_NODES = Cluster.DEFAULT_PORTS.map((port, i) => ({ service: `redis-cluster-${i + 1}`, port }))
const CLUSTER_NETWORK = "cluster"
const addressOf = (service: ClusterService) => {
  const networks = service.networks
  return networks === undefined || Array.isArray(networks)
    ? undefined
    : (networks as Record<string, { ipv4_address?: string } | null>)[CLUSTER_NETWORK]?.ipv4_address
}
/** The script of the one-shot service, run as `sh -ec SCRIPT`. */
const clusterScript = () => {
  const command = clusterServices["redis-cluster-create"]!.command
  if (!Array.isArray(command) || command[0] !== "sh" || !/^-e?c$/.test(command[1] ?? "") || command.length !== 3)
    return expect.fail("redis-cluster-create's command is not [sh, -ec, SCRIPT]")
  return command[2] as string
}

describe("docker-compose.cluster.yml", () => {
  it("has the app, the one-shot cluster creation and six Redis nodes, in a project of its own", () => {
    expect(Object.keys(clusterServices).sort()).toEqual(
      ["app", "redis-cluster-create", ...CLUSTER_NODES.map((n) => n.service)].sort()
    )
    // Without a name of its own it would share docker-compose.yml's project (the directory's name), its `app` too.
    expect(clusterCompose.name).toMatch(/^[a-z0-9][a-z0-9_-]*$/)
  })

  itBuildsTheAppHere(clusterServices.app!)
  itPublishes8000(clusterServices.app!)

  it("runs the app in the cluster stage, seeded with every node by its service name, and waiting for a replica", () => {
    const env = environmentOf(clusterServices.app!)
    expect(env.POLL_STAGE).toBe("cluster")
    expect(env.REDIS_WAIT_REPLICAS).toBe(String(Cluster.REPLICAS_PER_MASTER))
    // The seeds are what the app's own REDIS_CLUSTER parser accepts.
    expect(Either.isRight(parseSeeds(env.REDIS_CLUSTER ?? ""))).toBe(true)
    const seeds = (env.REDIS_CLUSTER ?? "").split(",").map((seed) => {
      const url = new URL(seed.trim())
      return { protocol: url.protocol, service: url.hostname, port: Number(url.port) }
    })
    expect(seeds).toEqual(CLUSTER_NODES.map(({ service, port }) => ({ protocol: "redis:", service, port })))
  })

  it("starts the app only once the cluster is created and ready, on the nodes' network", () => {
    const dependsOn = clusterServices.app!.depends_on as Record<string, { condition?: string }>
    expect(dependsOn["redis-cluster-create"]?.condition).toBe("service_completed_successfully")
    expect(clusterServices.app!.networks).toContain(CLUSTER_NETWORK)
  })

  it("gives each node a fixed address no container without one can be handed", () => {
    const config = clusterCompose.networks?.[CLUSTER_NETWORK]?.ipam?.config?.[0]
    expect(config?.subnet).toMatch(/^\d+\.\d+\.\d+\.\d+\/\d+$/)
    expect(config?.ip_range).toMatch(/^\d+\.\d+\.\d+\.\d+\/\d+$/)
    expect(inside(config!.ip_range!.split("/")[0]!, config!.subnet!)).toBe(true)
    const addresses = CLUSTER_NODES.map(({ service }) => addressOf(clusterServices[service]!))
    for (const address of addresses) {
      expect(address).toMatch(/^\d+\.\d+\.\d+\.\d+$/)
      expect(inside(address!, config!.subnet!), `${address} in ${config!.subnet}`).toBe(true)
      expect(inside(address!, config!.ip_range!), `${address} outside ${config!.ip_range}`).toBe(false)
    }
    expect(new Set(addresses).size).toBe(CLUSTER_NODES.length)
  })

  for (const { service, port } of CLUSTER_NODES) {
    describe(service, () => {
      const node = clusterServices[service]!
      const command = words(node.command)

      itIsARedisOn(node, port)

      it(`is a cluster node on ${port} inside the container too, set as \`npm run dev -- --cluster\` sets its nodes`, () => {
        expect(command[0]).toBe("redis-server")
        expect(flag(command, "--port")).toBe(String(port))
        for (const [name, value] of Cluster.NODE_SETTINGS) expect(flag(command, name), name).toBe(value)
        // Relative: in the data directory (/data), so on the volume.
        expect(flag(command, "--cluster-config-file")).toMatch(/^[^/]+$/)
      })

      it("announces its fixed address", () => {
        expect(flag(command, "--cluster-announce-ip")).toBe(addressOf(node))
      })

      it("keeps its data and nodes.conf in a volume of its own mounted on /data", () => {
        const mounts = (node.volumes ?? []).map((v) => (typeof v === "string" ? v.split(":") : [undefined, v.target]))
        const data = mounts.find(([, target]) => target === "/data")?.[0]
        expect(Object.keys(clusterCompose.volumes ?? {})).toContain(data)
        const others = CLUSTER_NODES.filter((n) => n.service !== service).flatMap((n) =>
          (clusterServices[n.service]!.volumes ?? []).map((v) => (typeof v === "string" ? v.split(":")[0] : undefined))
        )
        expect(others).not.toContain(data)
      })
    })
  }

  describe("redis-cluster-create", () => {
    const create = clusterServices["redis-cluster-create"]!
    const script = interpolated(clusterScript())
    const nodes = CLUSTER_NODES.map(({ service, port }) => `${addressOf(clusterServices[service]!)}:${port}`)

    it("is Redis 7, run once, after every node answers", () => {
      expect(create.image).toMatch(/^redis:7(\.|-|$)/)
      expect([undefined, "no"]).toContain(create.restart)
      const dependsOn = create.depends_on as Record<string, { condition?: string }>
      for (const { service } of CLUSTER_NODES) expect(dependsOn[service]?.condition).toBe("service_healthy")
      expect(create.networks).toContain(CLUSTER_NETWORK)
    })

    it("leaves no `$` for compose to fill from the host's environment", () => {
      expect(clusterScript()).not.toMatch(/(^|[^$])\$([^$]|$)/)
    })

    it("creates the cluster of every node by address, a replica per master, if the first node has joined none", () => {
      expect(/^\s*nodes="([^"]*)"/m.exec(script)?.[1]?.split(/\s+/)).toEqual(nodes)
      const [, host, nodePort] =
        /redis-cli -h (\S+) -p (\d+) cluster info[^\n]*cluster_known_nodes:1/.exec(script) ?? []
      expect(`${host}:${nodePort}`).toBe(nodes[0])
      const create = `redis-cli --cluster create \\$nodes --cluster-replicas ${Cluster.REPLICAS_PER_MASTER} --cluster-yes`
      expect(script).toMatch(new RegExp(`cluster_known_nodes:1'; then\\s+${create}\\s+fi`))
    })

    it("exits 0 only once every slot is served and every replica is in sync", () => {
      expect(script).toMatch(/wait_for redis-cli --cluster check \S+/)
      expect(script).toMatch(/for node in \$nodes; do wait_for in_sync "\$node"; done/)
      expect(script).toMatch(/in_sync\(\) \{[\s\S]*info replication.*state=online\|master_link_status:up/)
      // A wait that gives up fails the service, and with it the app's start.
      expect(script).toMatch(/wait_for\(\) \{[\s\S]*exit 1[\s\S]*\}/)
    })
  })
})

// ---------------------------------------------------------------------------------------------------------------------
// Dockerfile

interface Instruction {
  readonly keyword: string
  readonly args: string
}

/** Instructions with continuation lines joined and comments dropped. */
const instructions = (text: string): Array<Instruction> =>
  text
    .replace(/\\\r?\n/g, " ")
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => {
      const [keyword, ...rest] = line.split(/\s+/)
      return { keyword: keyword!.toUpperCase(), args: rest.join(" ") }
    })

/** Stages, each starting at its FROM. */
const stagesOf = (list: ReadonlyArray<Instruction>) => {
  const stages: Array<Array<Instruction>> = []
  for (const instruction of list) {
    if (instruction.keyword === "FROM") stages.push([])
    stages.at(-1)?.push(instruction)
  }
  return stages
}

/** An exec-form (`["node", "x"]`) or shell-form argument as words. */
const execWords = (args: string): Array<string> =>
  args.trim().startsWith("[") ? (JSON.parse(args) as Array<string>) : args.trim().split(/\s+/)

describe("Dockerfile", () => {
  const dockerfile = instructions(read("Dockerfile"))
  const stages = stagesOf(dockerfile)
  const build = stages[0] ?? []
  const runtime = stages.at(-1) ?? []
  const all = (stage: ReadonlyArray<Instruction>, keyword: string) => stage.filter((i) => i.keyword === keyword)
  const runs = (stage: ReadonlyArray<Instruction>) => all(stage, "RUN").map((i) => i.args)

  it("is multi-stage, every stage on Node 20 slim or alpine", () => {
    expect(stages.length).toBeGreaterThanOrEqual(2)
    for (const stage of stages) expect(stage[0]!.args).toMatch(/^node:20(\.\d+)*-(slim|alpine)\b/)
  })

  it("builds with every dependency and `npm run build` in the first stage", () => {
    expect(runs(build).some((r) => /\bnpm (install|ci)\b/.test(r) && !/--omit[= ]dev|--production/.test(r))).toBe(true)
    expect(runs(build).some((r) => /\bnpm run build\b/.test(r))).toBe(true)
  })

  it("installs only production dependencies in the runtime stage", () => {
    const installs = runs(runtime).filter((r) => /\bnpm (install|ci)\b/.test(r))
    expect(installs.length).toBeGreaterThan(0)
    for (const install of installs) expect(install).toMatch(/--omit[= ]dev|--production\b/)
  })

  it("takes the compiled app from the build stage", () => {
    const buildName = /\bAS\s+(\S+)/i.exec(build[0]!.args)?.[1]
    const fromBuild = all(runtime, "COPY").filter((c) => c.args.includes(`--from=${buildName ?? "0"}`))
    expect(fromBuild.some((c) => /\bdist\b/.test(c.args))).toBe(true)
  })

  it("runs `node dist/main.js`, which is where the build puts src/main.ts", () => {
    const cmd = all(runtime, "CMD").at(-1)
    expect(cmd).toBeDefined()
    expect(execWords(cmd!.args)).toEqual(["node", "dist/main.js"])
    const buildConfig = JSON.parse(read("tsconfig.build.json")) as {
      compilerOptions: { rootDir: string; outDir: string }
    }
    expect(buildConfig.compilerOptions).toMatchObject({ rootDir: "src", outDir: "dist" })
    expect(exists("src/main.ts")).toBe(true)
    expect((JSON.parse(read("package.json")) as { scripts: Record<string, string> }).scripts.start).toBe(
      "node dist/main.js"
    )
  })

  it("runs as a non-root user", () => {
    const user = all(runtime, "USER").at(-1)?.args
    expect(user).toBeDefined()
    expect(["root", "0", "0:0"]).not.toContain(user)
  })

  it("exposes the port the app listens on by default and compose publishes", () => {
    expect(all(runtime, "EXPOSE").flatMap((e) => e.args.split(/\s+/))).toContain("8000")
  })

  it("copies only files that exist in the repository", () => {
    for (const stage of stages) {
      for (const copy of all(stage, "COPY").filter((c) => !c.args.includes("--from="))) {
        const sources = execWords(copy.args).slice(0, -1)
        for (const source of sources) expect(exists(source), `COPY source ${source}`).toBe(true)
      }
    }
  })
})

describe(".dockerignore", () => {
  it("keeps local installs, builds, data and history out of the build context", () => {
    const ignored = read(".dockerignore")
      .split(/\r?\n/)
      .map((line) => line.trim().replace(/^\/|\/$/g, ""))
    for (const entry of ["node_modules", "dist", "data", ".git"]) expect(ignored).toContain(entry)
  })
})
