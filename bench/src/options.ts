import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import type { CacheMode } from "./runner.js";
import type { PeerCache } from "./workloads/small-io.js";

export interface BenchOptions {
  scale: number;
  only: string[] | undefined;
  pairs: number;
  warmup: number;
  cache: CacheMode;
  peerCache: PeerCache;
  workDir: string;
  outDir: string;
  list: boolean;
}

export const USAGE = `Usage: npm run bench -- [options]
  --scale N          multiply data sizes and counts by N (default 1; 1 TiB virtual sizes stay 1 TiB)
  --only a,b         run only these workloads (names or name prefixes, e.g. create,copy-raw-qcow2)
  --pairs N          measured rounds of alternated runs (default 5)
  --warmup N         discarded rounds before them (default 1)
  --page-cache hot|cold  hot: sync before each run, inputs stay cached (default);
                     cold: sync + drop caches before each run (root only)
  --peer-cache MODE  qemu-img bench -t MODE: writeback (default, page cache like vdisk) or none (O_DIRECT)
  --work-dir DIR     scratch directory, same file system as the pool (default $TMPDIR/vdisk-bench)
  --out DIR          where latest.json / latest.md go (default bench/results)
  --list             list the workloads and exit
(The root script re-runs npm, which would take these flags as its own config; they are then recovered
from the npm command line.)`;

/**
 * The arguments given to `npm run bench`, when npm consumed them. The root script is `npm run bench -w
 * @vdisk/bench`, so flags after the outer `--` reach the inner npm as *its* options: it turns `--scale 0.01`
 * into npm_config_scale=true plus a stray "0.01", and drops flags it knows (--only). The command lines of
 * the ancestors (the `sh -c "npm run bench -w @vdisk/bench --scale 0.01"` in between, npm's process title)
 * still hold them, so they are read back from /proc. Arguments containing spaces do not survive this.
 */
function npmCommandLineArgs(): string[] | undefined {
  if (process.env.npm_lifecycle_event !== "bench") return undefined;
  let pid = process.ppid;
  for (let depth = 0; depth < 8 && pid > 1; depth++) {
    let tokens: string[];
    let parent: number;
    try {
      tokens = readFileSync(`/proc/${pid}/cmdline`, "utf8")
        .split("\0")
        .flatMap((a) => a.split(/\s+/))
        .filter((a) => a !== "");
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    } catch {
      return undefined;
    }
    const run = tokens.findIndex((a, i) => (a === "run" || a === "run-script") && tokens[i + 1] === "bench");
    if (run >= 0) {
      const out: string[] = [];
      const rest = tokens.slice(run + 2);
      for (let i = 0; i < rest.length; i++) {
        const a = rest[i] as string;
        if (a === "-w" || a === "--workspace") i++;
        else if (!a.startsWith("--workspace=") && a !== "--") out.push(a);
      }
      if (out.some((a) => a.startsWith("-"))) return out;
    }
    pid = parent;
  }
  return undefined;
}

export function parseOptions(argv: readonly string[], benchRoot: string): BenchOptions {
  // Flags that arrived intact are used as given; otherwise (none, or only stray values) npm took them.
  const intact = argv.some((a) => a.startsWith("-"));
  const args = intact ? [...argv] : (npmCommandLineArgs() ?? [...argv]);
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      scale: { type: "string" },
      only: { type: "string" },
      pairs: { type: "string" },
      warmup: { type: "string" },
      "page-cache": { type: "string" },
      "peer-cache": { type: "string" },
      "work-dir": { type: "string" },
      out: { type: "string" },
      list: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const pick = (name: string): string | undefined => {
    const v = (values as Record<string, string | boolean | undefined>)[name];
    return typeof v === "string" ? v : undefined;
  };
  const number = (name: string, fallback: number, min: number): number => {
    const text = pick(name);
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!Number.isFinite(n) || n < min) throw new Error(`--${name} must be a number ≥ ${min}; got "${text}"`);
    return n;
  };
  const cache = pick("page-cache") ?? "hot";
  if (cache !== "hot" && cache !== "cold")
    throw new Error(`--page-cache must be hot or cold; got "${cache}"`);
  const peerCache = pick("peer-cache") ?? "writeback";
  if (peerCache !== "writeback" && peerCache !== "none")
    throw new Error(`--peer-cache must be writeback or none; got "${peerCache}"`);
  const only = pick("only");
  return {
    scale: number("scale", 1, 1e-6),
    only:
      only === undefined
        ? undefined
        : only
            .split(",")
            .map((s) => s.trim())
            .filter((s) => s !== ""),
    pairs: Math.floor(number("pairs", 5, 1)),
    warmup: Math.floor(number("warmup", 1, 0)),
    cache,
    peerCache,
    workDir: path.resolve(pick("work-dir") ?? path.join(os.tmpdir(), "vdisk-bench")),
    outDir: path.resolve(pick("out") ?? path.join(benchRoot, "results")),
    list: values.list === true,
  };
}
