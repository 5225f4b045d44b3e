import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createVdiskClient, TiB, type VdiskClient } from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";

/** The repository root: the CLI runs from there as `node --import tsx cli/src/main.ts`. */
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
export const CLI_ENTRY = join(REPO_ROOT, "cli/src/main.ts");

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** A real server on 127.0.0.1:0 in this process, with its own pool, plus an SDK client for setup/inspection. */
export interface TestServer {
  pool: string;
  port: number;
  server: RunningServer;
  client: VdiskClient;
  /** Runs `vdisk --server 127.0.0.1:PORT ARGS…` as a child process (never blocks this event loop). */
  cli(args: string[], options?: { env?: Record<string, string> }): Promise<CliResult>;
  close(): Promise<void>;
}

/** Runs the CLI with exactly these arguments (no --server added). */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  return new Promise((resolvePromise) => {
    execFile(
      process.execPath,
      ["--import", "tsx", CLI_ENTRY, ...args],
      { cwd: REPO_ROOT, env: { ...process.env, ...env }, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
        resolvePromise({ code, stdout, stderr });
      },
    );
  });
}

/** Starts the CLI without waiting (for signal tests). */
export function spawnCli(args: string[]): ChildProcess {
  return spawn(process.execPath, ["--import", "tsx", CLI_ENTRY, ...args], {
    cwd: REPO_ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
}

export async function startTestServer(tag: string): Promise<TestServer> {
  await mkdir("/tmp/cli-tests", { recursive: true });
  const pool = await mkdtemp(`/tmp/cli-tests/${tag}-`);
  const server = await startServer({
    config: { listen: "127.0.0.1:0", pool, maxCapacity: 256 * TiB, reflection: false, maxJobs: 4 },
    log: createLogger("silent", { pretty: false }),
  });
  const client = createVdiskClient({ baseUrl: `http://127.0.0.1:${server.port}`, timeoutMs: 20_000 });
  const address = `127.0.0.1:${server.port}`;
  return {
    pool,
    port: server.port,
    server,
    client,
    cli: (args, options) => runCli(["--server", address, ...args], options?.env),
    close: async () => {
      client.close();
      await server.close();
      await rm(pool, { recursive: true, force: true });
    },
  };
}

/** A port nothing listens on: bound, then released. */
export async function closedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
  const address = probe.address();
  await new Promise<void>((r) => probe.close(() => r()));
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

/** Polls until `check` returns a value (not undefined) or the time runs out. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs = 20_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits until the (only) job on `volume` is running with some progress, and returns its id. */
export async function runningJobOf(client: VdiskClient, volume: string): Promise<string> {
  return waitFor(`a running job on ${volume}`, async () => {
    for await (const job of client.listJobs({ volume })) {
      if (job.state === "running" && job.progress.doneBytes > 0) return job.id;
    }
    return undefined;
  });
}

/** Waits until a job reaches a terminal state and returns that state. */
export async function finalStateOf(client: VdiskClient, id: string, timeoutMs = 60_000): Promise<string> {
  return waitFor(
    `job ${id} to end`,
    async () => {
      const job = await client.getJob(id);
      return ["succeeded", "failed", "cancelled"].includes(job.state) ? job.state : undefined;
    },
    timeoutMs,
  );
}

export async function cleanupDir(path: string): Promise<void> {
  await rm(path, { recursive: true, force: true });
}

export { mkdtemp };
