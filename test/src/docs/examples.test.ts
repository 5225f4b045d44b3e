import { execFile } from "node:child_process";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/** The examples in docs/examples are documentation that must keep working: each runs against a live server. */
const run = promisify(execFile);
const repoRoot = join(import.meta.dirname, "..", "..", "..");
const examplesDir = join(repoRoot, "docs", "examples");
let pool: string;
let server: RunningServer;

beforeAll(async () => {
  pool = await mkdtemp(join(tmpdir(), "vdisk-examples-"));
  server = await startServer({
    config: { listen: "127.0.0.1:0", pool, maxCapacity: 2 ** 44, reflection: false, maxJobs: 2 },
    log: createLogger("silent", { pretty: false }),
  });
});

afterAll(async () => {
  await server?.close();
  if (pool) await rm(pool, { recursive: true, force: true });
});

const runExample = async (file: string) =>
  (
    await run(join(repoRoot, "node_modules/.bin/tsx"), [join(examplesDir, file)], {
      cwd: repoRoot,
      env: { ...process.env, VDISK_SERVER: `127.0.0.1:${server.port}` },
    })
  ).stdout;

describe("docs/examples", () => {
  it("covers every example file", async () => {
    expect((await readdir(examplesDir)).sort()).toEqual(["allocation-map.ts", "cancel-a-job.ts", "create-and-watch.ts"]);
  });

  it("create-and-watch creates, reports progress and deletes", async () => {
    const out = await runExample("create-and-watch.ts");
    expect(out).toMatch(/SUCCEEDED|succeeded/i);
    expect(out).toMatch(/created example-disk: 10737418240 bytes/);
  }, 60_000);

  it("allocation-map shows one data extent and reads exactly its bytes", async () => {
    const out = await runExample("allocation-map.ts");
    expect(out).toMatch(/8388608\+1048576 data depth=0/);
    expect(out).toMatch(/read 1048576 bytes of data/);
  }, 60_000);

  it("cancel-a-job ends the job cancelled with nothing left behind", async () => {
    const out = await runExample("cancel-a-job.ts");
    expect(out).toMatch(/job ended: canceled/);
    expect(out).toMatch(/final state: CANCELLED/i);
    expect(out).toMatch(/volume left behind: false/);
  }, 120_000);
});
