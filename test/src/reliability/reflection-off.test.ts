import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { credentials, Client as GrpcClient, status } from "@grpc/grpc-js";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/** Reflection is switchable off (reliability.md §d item 11): the service is then simply not there. */
let poolDir: string;
let server: RunningServer;

beforeAll(async () => {
  await mkdir("/tmp/sec", { recursive: true });
  poolDir = await mkdtemp("/tmp/sec/reflection-off-");
  server = await startServer({
    config: { listen: "127.0.0.1:0", pool: poolDir, maxCapacity: 1 << 30, reflection: false, maxJobs: 1 },
    log: createLogger("silent", { pretty: false }),
  });
});

afterAll(async () => {
  await server?.close();
  if (poolDir) await rm(poolDir, { recursive: true, force: true });
});

describe("reflection off", () => {
  it("answers UNIMPLEMENTED for grpc.reflection.v1 and v1alpha", async () => {
    for (const version of ["v1", "v1alpha"]) {
      const client = new GrpcClient(`127.0.0.1:${server.port}`, credentials.createInsecure());
      const code = await new Promise<number>((resolve) => {
        const call = client.makeBidiStreamRequest(
          `/grpc.reflection.${version}.ServerReflection/ServerReflectionInfo`,
          (b: Buffer) => b,
          (b: Buffer) => b,
        );
        call.on("data", () => resolve(-1));
        call.on("error", (err: { code: number }) => resolve(err.code));
        call.on("end", () => resolve(status.OK));
        // list_services: "" (field 7, length 0)
        call.write(Buffer.from([0x3a, 0x00]));
        call.end();
      });
      client.close();
      expect(code).toBe(status.UNIMPLEMENTED);
    }
  });
});
