import { type ChildProcess, spawn } from "node:child_process";
import { rmSync } from "node:fs";
import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { createVdiskClient, type VdiskClient, type VdiskClientOptions } from "@vdisk/sdk";

/**
 * The real server as its own process, so SIGKILL is a real crash. Shared by the reliability tests
 * (kill -9 during jobs, the crash loop); the server package's own e2e test keeps its copy because the
 * server package cannot depend on this one.
 */
export const repoRoot = join(import.meta.dirname, "..", "..", "..");

/**
 * How the server is started:
 * - `tsx`: `node --import tsx server/src/main.ts`, exactly as an operator runs it from a checkout;
 * - `bundle`: the same sources bundled once by esbuild (npm packages left external), for tests that restart
 *   the server hundreds of times: start-up then costs about a quarter of the CPU (no TypeScript transform,
 *   one module instead of hundreds).
 */
export type ServerLaunch = "tsx" | "bundle";

export interface ServerProcess {
  child: ChildProcess;
  port: number;
  client: VdiskClient;
  /** Everything the server wrote so far (stdout then stderr), for failure messages. */
  output(): string;
}

export interface SpawnOptions {
  launch?: ServerLaunch;
  /** Extra server flags (e.g. `--no-reflection`). */
  args?: string[];
  /** Client options besides the address. */
  client?: Omit<VdiskClientOptions, "baseUrl" | "transport">;
  /** Called with every spawned child, so a test can kill stragglers in its cleanup. */
  track?: (child: ChildProcess) => void;
}

// npm packages stay external: some carry native addons (libsql, koffi) and they resolve from the repository's
// node_modules because the bundle is written inside the repository.
const EXTERNAL = ["@grpc/*", "@bufbuild/*", "libsql", "koffi", "pino", "pino-pretty", "grpc-health-check"];

let bundled: Promise<string> | undefined;

/** Bundles server/src/main.ts once per process (about a second) and returns the file to run. */
export function serverBundle(): Promise<string> {
  bundled ??= (async () => {
    // esbuild is a dev dependency of this package (tsx and vitest bring the same one); fail clearly if absent.
    const esbuild = await import("esbuild").catch((err: unknown) => {
      throw new Error(`the bundle launch needs esbuild (installed with tsx): ${String(err)}`);
    });
    const dir = join(repoRoot, "test", ".cache");
    await mkdir(dir, { recursive: true });
    await removeStaleBundles(dir);
    const outfile = join(dir, `server-${process.pid}.mjs`);
    await esbuild.build({
      entryPoints: [join(repoRoot, "server", "src", "main.ts")],
      bundle: true,
      platform: "node",
      format: "esm",
      target: "node20",
      external: EXTERNAL,
      outfile,
      logLevel: "warning",
    });
    process.once("exit", () => rmSync(outfile, { force: true }));
    return outfile;
  })();
  return bundled;
}

/** Bundles of processes that are gone (a test worker may end without an "exit" event). */
async function removeStaleBundles(dir: string): Promise<void> {
  for (const name of await readdir(dir)) {
    const pid = Number(/^server-(\d+)\.mjs$/.exec(name)?.[1]);
    if (!pid || pid === process.pid || processAlive(pid)) continue;
    await rm(join(dir, name), { force: true });
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Starts the server on a random port of 127.0.0.1 over `pool` and resolves once it logged "listening". */
export async function spawnServer(pool: string, options: SpawnOptions = {}): Promise<ServerProcess> {
  const entry =
    options.launch === "bundle" ? [await serverBundle()] : ["--import", "tsx", "server/src/main.ts"];
  const child = spawn(
    process.execPath,
    [...entry, "--listen", "127.0.0.1:0", "--pool", pool, ...(options.args ?? [])],
    { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] },
  );
  options.track?.(child);
  let out = "";
  let err = "";
  child.stderr?.on("data", (d: Buffer) => {
    err += d.toString();
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
      const found = /"port":(\d+)[^\n]*listening/.exec(out)?.[1];
      if (found) resolve(Number(found));
    });
    child.once("exit", (code, signal) =>
      reject(new Error(`server exited (${code ?? signal}) before listening:\n${out}\n${err}`)),
    );
  });
  const client = createVdiskClient({
    timeoutMs: 30_000,
    ...options.client,
    baseUrl: `http://127.0.0.1:${port}`,
  });
  return { child, port, client, output: () => `${out}\n${err}` };
}

/** Resolves when the child has exited (at once if it already has). */
export function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", () => resolve()));
}

/** kill -9 and wait for the process to be gone. */
export async function crash(child: ChildProcess): Promise<void> {
  const gone = exited(child);
  child.kill("SIGKILL");
  await gone;
}
