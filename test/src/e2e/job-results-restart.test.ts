import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { createVdiskClient, GiB, MiB } from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, expect, it } from "vitest";

/**
 * A control plane that lost track of a job (it restarted, or so did the server) asks for it again by id:
 * a succeeded job must still carry its outcome — the check report, the allocate summary — not only SUCCEEDED.
 */
let poolDir: string;
let server: RunningServer | undefined;

async function start(): Promise<RunningServer> {
  return startServer({
    config: { listen: "127.0.0.1:0", pool: poolDir, maxCapacity: 64 * GiB, reflection: false, maxJobs: 2 },
    log: createLogger("silent", { pretty: false }),
  });
}

beforeAll(async () => {
  await mkdir("/tmp/sdk", { recursive: true });
  poolDir = await mkdtemp("/tmp/sdk/e2e-results-");
});

afterAll(async () => {
  await server?.close();
  if (poolDir) await rm(poolDir, { recursive: true, force: true });
});

it("returns a check report and an allocate summary after the server restarted", async () => {
  server = await start();
  let client = createVdiskClient({ baseUrl: `http://127.0.0.1:${server.port}` });
  await client.createVolumeAndWait({ name: "kept", format: "qcow2", capacityBytes: 64 * MiB });
  const check = client.checkVolume("kept");
  const report = await check.result;
  const checkJob = await check.jobId;
  const allocate = client.allocateRange("kept", { mode: "full", offset: 0, length: 4 * MiB });
  const { summary } = await allocate.result;
  const allocateJob = await allocate.jobId;
  expect(summary.zeroedBytes).toBe(4 * MiB);
  client.close();
  await server.close();

  server = await start();
  client = createVdiskClient({ baseUrl: `http://127.0.0.1:${server.port}` });
  try {
    const checked = await client.getJob(checkJob);
    expect(checked.state).toBe("succeeded");
    expect(checked.result?.check).toEqual(report);
    const allocated = await client.getJob(allocateJob);
    expect(allocated.result?.allocate).toEqual(summary);
    expect(allocated.result?.volume?.name).toBe("kept");
    // Re-attaching to the ended job settles with the same outcome.
    expect((await client.watchJob(checkJob).result).check).toEqual(report);
  } finally {
    client.close();
  }
});
