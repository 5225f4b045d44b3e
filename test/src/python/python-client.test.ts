import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, expect, it } from "vitest";

/**
 * The contract as another language sees it: clients/python/tests/test_live.py drives a live server with
 * only the generated Python stubs and Debian's grpcio (create, write, read, map, watch a job, error codes
 * with ErrorInfo). Runs with /usr/bin/python3, where Debian's python3-grpcio lives.
 */
const run = promisify(execFile);
const repoRoot = join(import.meta.dirname, "..", "..", "..");
let pool: string;
let server: RunningServer;

beforeAll(async () => {
  pool = await mkdtemp(join(tmpdir(), "vdisk-py-"));
  server = await startServer({
    config: { listen: "127.0.0.1:0", pool, maxCapacity: 2 ** 48, reflection: true, maxJobs: 2 },
    log: createLogger("silent", { pretty: false }),
  });
});

afterAll(async () => {
  await server?.close();
  if (pool) await rm(pool, { recursive: true, force: true });
});

it("the generated Python client passes its live contract tests", async () => {
  const result = await run("/usr/bin/python3", ["-m", "unittest", "-v", "tests.test_live"], {
    cwd: join(repoRoot, "clients/python"),
    env: { ...process.env, VDISK_TARGET: `127.0.0.1:${server.port}`, PYTHONDONTWRITEBYTECODE: "1" },
  }).catch((err: { stdout?: string; stderr?: string }) => {
    throw new Error(`python client tests failed:\n${err.stderr ?? ""}${err.stdout ?? ""}`);
  });
  expect(result.stderr).toMatch(/Ran 2 tests/);
  expect(result.stderr).toMatch(/\nOK/);
}, 60_000);
