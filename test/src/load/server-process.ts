import { type ChildProcess, spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";

const repoRoot = join(import.meta.dirname, "..", "..", "..");
/** Server output kept for diagnostics: the tail only, so a chatty server cannot grow the test's memory. */
const OUTPUT_TAIL_CHARS = 64 * 1024;

export interface ServerProcess {
  child: ChildProcess;
  port: number;
  /** The last lines the server printed (stdout and stderr interleaved). */
  output(): string;
  /** SIGTERM, then SIGKILL if the drain takes longer than `graceMs`. Resolves with the exit code. */
  stop(graceMs?: number): Promise<number | null>;
}

/**
 * Runs main.ts as its own process, so that its memory (VmRSS, VmHWM) can be read from /proc and is not
 * mixed with the load generator's. Resolves once the server logs the port it bound.
 */
export function spawnServer(pool: string, extraArgs: readonly string[] = []): Promise<ServerProcess> {
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "server/src/main.ts", "--listen", "127.0.0.1:0", "--pool", pool, ...extraArgs],
    { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] },
  );
  let tail = "";
  const keep = (d: Buffer) => {
    tail = (tail + d.toString()).slice(-OUTPUT_TAIL_CHARS);
  };
  // Both pipes are always drained: a server blocked on a full stdout pipe would look like a hang under load.
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));

  const stop = async (graceMs = 15_000) => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    try {
      return await exited;
    } finally {
      clearTimeout(timer);
    }
  };

  return new Promise((resolve, reject) => {
    const onData = () => {
      const port = /"port":(\d+)[^\n]*listening/.exec(tail)?.[1];
      if (port === undefined) return;
      child.stdout?.off("data", onData);
      resolve({ child, port: Number(port), output: () => tail, stop });
    };
    child.stdout?.on("data", onData);
    child.once("exit", (code) => reject(new Error(`server exited (${code}) before listening:\n${tail}`)));
  });
}

export interface MemorySample {
  /** Seconds since sampling started. */
  t: number;
  rssBytes: number;
  /** Peak RSS so far, as the kernel tracks it (VmHWM): catches spikes between samples. */
  hwmBytes: number;
}

/** Reads VmRSS and VmHWM of a process from /proc/PID/status (Linux). */
export async function readMemory(pid: number): Promise<{ rssBytes: number; hwmBytes: number }> {
  const text = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = (field: string) => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(text);
    if (!m) throw new Error(`/proc/${pid}/status has no ${field}`);
    return Number(m[1]) * 1024;
  };
  return { rssBytes: kib("VmRSS"), hwmBytes: kib("VmHWM") };
}

/** Samples a process's memory every `intervalMs` until stopped. */
export function sampleMemory(pid: number, intervalMs: number): { stop(): Promise<MemorySample[]> } {
  const samples: MemorySample[] = [];
  const started = performance.now();
  let pending: Promise<void> = Promise.resolve();
  const timer = setInterval(() => {
    pending = readMemory(pid).then(
      (m) => {
        samples.push({ t: (performance.now() - started) / 1000, ...m });
      },
      () => {
        // The process may be exiting; the missing sample shows as a gap, not a failure.
      },
    );
  }, intervalMs);
  return {
    async stop() {
      clearInterval(timer);
      await pending;
      return samples;
    },
  };
}

/** CPU time (user + system) a process has used so far, in seconds, from /proc/PID/stat (Linux). */
export async function readCpuSeconds(pid: number): Promise<number> {
  const text = await readFile(`/proc/${pid}/stat`, "utf8");
  // Fields after the parenthesised command name (which may contain spaces); utime and stime are the 12th and
  // 13th of them, in clock ticks (USER_HZ, 100 on Linux).
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}
