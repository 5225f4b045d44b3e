import { spawn } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { CLI_ENTRY, REPO_ROOT, runCli, waitFor } from "./harness.js";

// Every CLI run is a fresh Node process (~1-3 s on a loaded 2-core machine); tests make several.
vi.setConfig({ testTimeout: 120_000 });

/** `vdisk serve` runs the real server in the CLI's process, configured by the server's own loader. */
let pool: string;

beforeAll(async () => {
  await mkdir("/tmp/cli-tests", { recursive: true });
  pool = await mkdtemp("/tmp/cli-tests/serve-");
});
afterAll(async () => {
  await rm(pool, { recursive: true, force: true });
});

describe("vdisk serve", () => {
  it("serves on the requested address, answers the CLI, and stops cleanly on SIGTERM", async () => {
    const child = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        CLI_ENTRY,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--pool",
        pool,
        "--log-level",
        "info",
      ],
      { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, VDISK_MAX_JOBS: "2" } },
    );
    let logs = "";
    child.stdout?.on("data", (d) => (logs += d));
    child.stderr?.on("data", (d) => (logs += d));
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    try {
      const port = await waitFor("the listening log line", async () => {
        const m = /"port":(\d+)/.exec(logs);
        return m ? Number(m[1]) : undefined;
      });
      expect(logs).toContain(pool);
      const created = await runCli([
        "--server",
        `127.0.0.1:${port}`,
        "volume",
        "create",
        "served",
        "--format",
        "raw",
        "--size",
        "1M",
      ]);
      expect(created.code, created.stderr).toBe(0);
      const list = await runCli(["--server", `127.0.0.1:${port}`, "--json", "volume", "list"]);
      expect(JSON.parse(list.stdout).map((v: { name: string }) => v.name)).toEqual(["served"]);
    } finally {
      child.kill("SIGTERM");
    }
    expect(await exited).toBe(0);
  });

  it("rejects bad server flags as usage errors (exit 2)", async () => {
    const r = await runCli(["serve", "--listen", "nowhere", "--pool", pool]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--listen must be HOST:PORT/);
    const help = await runCli(["serve", "--help"]);
    expect(help.code).toBe(0);
    for (const flag of [
      "--listen",
      "--pool",
      "--max-capacity",
      "--log-level",
      "--no-reflection",
      "--max-jobs",
    ])
      expect(help.stdout).toContain(flag);
  });
});
