import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { type AddressInfo, connect, createServer, type Server, type Socket } from "node:net";
import { createVdiskClient, GiB, type JobSnapshot, type VdiskClient } from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, expect, it } from "vitest";

/**
 * A dropped connection in the middle of a job stream: the JobHandle must re-attach with WatchJob over a
 * new connection and keep following the same job. The connection runs through a TCP relay whose sockets
 * the test destroys, which is what a network failure looks like to both ends.
 */
let poolDir: string;
let server: RunningServer;
let relay: Server;
const relayed = new Set<Socket>();
let client: VdiskClient;

function dropConnections(): void {
  for (const socket of relayed) socket.destroy();
  relayed.clear();
}

beforeAll(async () => {
  await mkdir("/tmp/sdk", { recursive: true });
  poolDir = await mkdtemp("/tmp/sdk/e2e-reattach-");
  server = await startServer({
    config: { listen: "127.0.0.1:0", pool: poolDir, maxCapacity: 64 * GiB, reflection: false, maxJobs: 2 },
    log: createLogger("silent", { pretty: false }),
  });
  relay = createServer((incoming) => {
    const outgoing = connect(server.port, "127.0.0.1");
    relayed.add(incoming).add(outgoing);
    incoming.pipe(outgoing).pipe(incoming);
    incoming.on("error", () => outgoing.destroy());
    outgoing.on("error", () => incoming.destroy());
    incoming.on("close", () => outgoing.destroy());
    outgoing.on("close", () => incoming.destroy());
  });
  await new Promise<void>((resolve) => relay.listen(0, "127.0.0.1", resolve));
  const { port } = relay.address() as AddressInfo;
  client = createVdiskClient({
    baseUrl: `http://127.0.0.1:${port}`,
    timeoutMs: 20_000,
    reattach: { initialDelayMs: 50 },
  });
});

afterAll(async () => {
  client?.close();
  dropConnections();
  await new Promise((resolve) => relay?.close(resolve));
  await server?.close();
  if (poolDir) await rm(poolDir, { recursive: true, force: true });
});

it("re-attaches to the job after the connection drops, and the result still settles", async () => {
  const handle = client.createVolume({
    name: "survivor",
    format: "raw",
    capacityBytes: 16 * GiB,
    preallocation: "full",
  });
  const jobId = await handle.jobId;
  const afterDrop: JobSnapshot[] = [];
  let dropped = false;
  for await (const snapshot of handle) {
    expect(snapshot.jobId).toBe(jobId);
    if (!dropped) {
      dropped = true;
      dropConnections();
      continue;
    }
    afterDrop.push(snapshot);
    // Following the job again over a new connection is what this test is about; stop the 16 GiB write here.
    if (afterDrop.length === 1) await handle.cancel();
  }
  expect(afterDrop.length).toBeGreaterThan(0);
  expect(afterDrop.at(-1)?.state).toBe("cancelled");
  await expect(handle.result).rejects.toMatchObject({ code: "canceled" });
  await expect(client.getVolume("survivor")).rejects.toMatchObject({ code: "not_found" });
});
