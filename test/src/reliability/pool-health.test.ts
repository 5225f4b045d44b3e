import { mkdir, mkdtemp, rename, rm } from "node:fs/promises";
import { credentials, Client as GrpcClient } from "@grpc/grpc-js";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/** Health follows the pool: NOT_SERVING while the pool directory can't be written, SERVING once it can. */
let poolDir: string;
let server: RunningServer;

/** grpc.health.v1.Health/Check of the overall service; 1 = SERVING, 2 = NOT_SERVING. */
function healthStatus(port: number): Promise<number> {
  const client = new GrpcClient(`127.0.0.1:${port}`, credentials.createInsecure());
  return new Promise<number>((resolve, reject) => {
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      () => Buffer.alloc(0),
      (b: Buffer) => b,
      {},
      (err, reply) => {
        client.close();
        if (err) reject(err);
        else resolve(reply?.[0] === 0x08 ? (reply[1] as number) : -1);
      },
    );
  });
}

async function eventually(port: number, want: number): Promise<number> {
  let last = -1;
  for (let i = 0; i < 50; i++) {
    last = await healthStatus(port);
    if (last === want) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return last;
}

beforeAll(async () => {
  await mkdir("/tmp/sec", { recursive: true });
  poolDir = await mkdtemp("/tmp/sec/pool-health-");
  server = await startServer({
    config: { listen: "127.0.0.1:0", pool: poolDir, maxCapacity: 1 << 30, reflection: false, maxJobs: 1 },
    log: createLogger("silent", { pretty: false }),
    poolProbeMs: 50,
  });
});

afterAll(async () => {
  await server?.close();
  if (poolDir) {
    await rm(poolDir, { recursive: true, force: true });
    await rm(`${poolDir}.away`, { recursive: true, force: true });
  }
});

describe("pool health", () => {
  it("turns NOT_SERVING when the pool directory disappears and SERVING when it is back", async () => {
    expect(await healthStatus(server.port)).toBe(1);
    // Tests run as root, which ignores permission bits; a moved-away directory is unwritable for anyone.
    await rename(poolDir, `${poolDir}.away`);
    expect(await eventually(server.port, 2)).toBe(2);
    await rename(`${poolDir}.away`, poolDir);
    expect(await eventually(server.port, 1)).toBe(1);
  });
});
