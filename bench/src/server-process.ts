import { type ChildProcess, spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createVdiskClient, type VdiskClient } from "@vdisk/sdk";

/** Root of the repository (the server is started from its sources, as `npm start` does). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** The vdisk server as a separate process, so the figures include what a control plane pays: gRPC, HTTP/2, a process boundary. */
export interface ServerProcess {
  pid: number;
  port: number;
  client: VdiskClient;
  stop(): Promise<void>;
}

export async function startServerProcess(pool: string): Promise<ServerProcess> {
  // Extra node flags for the server, e.g. VDISK_BENCH_SERVER_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof".
  const extra = (process.env.VDISK_BENCH_SERVER_NODE_ARGS ?? "").split(/\s+/).filter((a) => a !== "");
  const child = spawn(
    process.execPath,
    [
      ...extra,
      "--import",
      "tsx",
      "server/src/main.ts",
      "--listen",
      "127.0.0.1:0",
      "--pool",
      pool,
      "--log-level",
      "info",
    ],
    { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] },
  );
  const port = await listeningPort(child);
  if (child.pid === undefined) throw new Error("server process has no pid");
  const client = createVdiskClient({ baseUrl: `http://127.0.0.1:${port}` });
  return {
    pid: child.pid,
    port,
    client,
    async stop() {
      client.close();
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Resolves with the port from the server's JSON "listening" log line; keeps draining its output afterwards. */
function listeningPort(child: ChildProcess): Promise<number> {
  return new Promise((resolve, reject) => {
    let pending = "";
    let stderr = "";
    let found = false;
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      stderr = (stderr + d).slice(-8000);
    });
    // The pipe is read to the end so a chatty server never blocks on a full pipe.
    child.stdout?.setEncoding("utf8").on("data", (d: string) => {
      if (found) return;
      pending += d;
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        if (!line.startsWith("{")) continue;
        try {
          const entry = JSON.parse(line) as { port?: number; msg?: string; level?: number };
          if (entry.port !== undefined && entry.msg?.includes("listening")) {
            found = true;
            resolve(entry.port);
            return;
          }
          if (entry.level !== undefined && entry.level >= 50) process.stderr.write(`server: ${line}\n`);
        } catch {
          // not JSON: ignore
        }
      }
    });
    child.once("exit", (code, signal) => {
      if (!found) reject(new Error(`vdisk server exited (${code ?? signal}) before listening:\n${stderr}`));
      else if (code !== 0 && signal !== "SIGTERM")
        process.stderr.write(`vdisk server exited (${code ?? signal}):\n${stderr}\n`);
    });
  });
}
