import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import { open, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";

/** What one run of an external peer command cost. */
export interface CommandRun {
  seconds: number;
  /** Peak resident set of the command (GNU time %M), when /usr/bin/time is present. */
  peakRssBytes: number | undefined;
  stdout: string;
}

const GNU_TIME = "/usr/bin/time";
const hasGnuTime = fs.existsSync(GNU_TIME);

/**
 * Runs a command to completion and times it (wall clock, spawn to exit). Wrapped in GNU time only to
 * learn its peak RSS; the wrapper's own start-up is a fork+exec, the same for every peer run.
 */
export async function runCommand(argv: readonly string[], opts: { cwd?: string } = {}): Promise<CommandRun> {
  const rssFile = path.join(
    os.tmpdir(),
    `vdisk-bench-rss-${process.pid}-${Math.random().toString(36).slice(2)}`,
  );
  const full = hasGnuTime ? [GNU_TIME, "-f", "%M", "-o", rssFile, ...argv] : [...argv];
  const started = process.hrtime.bigint();
  const child = spawn(full[0] as string, full.slice(1), {
    cwd: opts.cwd,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => {
    stdout += d;
  });
  child.stderr.setEncoding("utf8").on("data", (d: string) => {
    stderr += d;
  });
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (c) => resolve(c));
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  let peakRssBytes: number | undefined;
  if (hasGnuTime) {
    const text = await readFile(rssFile, "utf8").catch(() => "");
    await rm(rssFile, { force: true });
    const kb = Number(text.trim().split("\n").pop());
    if (Number.isFinite(kb) && kb > 0) peakRssBytes = kb * 1024;
  }
  if (code !== 0) {
    throw new Error(`${argv.join(" ")} exited with ${code}: ${stderr.trim().slice(0, 2000)}`);
  }
  return { seconds, peakRssBytes, stdout };
}

/** Runs a short helper command (setup, not timed) and returns its stdout; throws on failure. */
export function runQuiet(argv: readonly string[], opts: { cwd?: string; input?: string } = {}): string {
  const r = spawnSync(argv[0] as string, argv.slice(1), {
    cwd: opts.cwd,
    input: opts.input,
    encoding: "utf8",
    maxBuffer: 256 << 20,
  });
  if (r.error) throw r.error;
  if (r.status !== 0)
    throw new Error(`${argv.join(" ")} exited with ${r.status}: ${r.stderr.slice(0, 2000)}`);
  return r.stdout;
}

/** fsync(2)s each file, so every contestant pays for making its output durable (qemu-img convert does not fsync). */
export async function fsyncFiles(paths: readonly string[]): Promise<void> {
  for (const p of paths) {
    const handle = await open(p, "r");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }
}

/** Writes out every dirty page, so a run does not pay for the previous run's write-back. */
export function syncAll(): void {
  spawnSync("sync");
}

/** Empties the page cache (root only); returns false when not permitted. */
export async function dropCaches(): Promise<boolean> {
  syncAll();
  try {
    await writeFile("/proc/sys/vm/drop_caches", "3\n");
    return true;
  } catch {
    return false;
  }
}

/** Resets a process's peak-RSS counter (VmHWM) to its current RSS (Linux ≥ 4.0, clear_refs value 5). */
export async function resetPeakRss(pid: number | "self"): Promise<boolean> {
  try {
    await writeFile(`/proc/${pid}/clear_refs`, "5\n");
    return true;
  } catch {
    return false;
  }
}

/** VmHWM of a process, in bytes. */
export async function readPeakRss(pid: number | "self"): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(status);
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Removes files if present (between runs; never timed). */
export async function removeAll(paths: readonly string[]): Promise<void> {
  for (const p of paths) await rm(p, { force: true, recursive: true });
}
