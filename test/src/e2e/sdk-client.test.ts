import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createVdiskClient, GiB, KiB, MiB, type VdiskClient, VdiskError } from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/**
 * The SDK's behaviour against a real server: typed errors with ErrorInfo from grpc-status-details-bin,
 * idempotent request ids, abort cancelling a running job, and sparse file upload/download.
 */
let poolDir: string;
let server: RunningServer;
let client: VdiskClient;

beforeAll(async () => {
  await mkdir("/tmp/sdk", { recursive: true });
  poolDir = await mkdtemp("/tmp/sdk/e2e-client-");
  server = await startServer({
    config: { listen: "127.0.0.1:0", pool: poolDir, maxCapacity: 64 * GiB, reflection: false, maxJobs: 2 },
    log: createLogger("silent", { pretty: false }),
  });
  client = createVdiskClient({ baseUrl: `http://127.0.0.1:${server.port}`, timeoutMs: 20_000 });
});

afterAll(async () => {
  client?.close();
  await server?.close();
  if (poolDir) await rm(poolDir, { recursive: true, force: true });
});

describe("SDK against a real server", () => {
  it("turns a gRPC failure into a VdiskError with the ErrorInfo reason", async () => {
    const error = await client.getVolume("missing").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VdiskError);
    const vdiskError = error as VdiskError;
    expect(vdiskError.code).toBe("not_found");
    expect(vdiskError.reason).toMatch(/^[A-Z][A-Z_]+$/);
    expect(vdiskError.domain).toBe("vdisk.dev");

    const tooBig = await client
      .createVolumeAndWait({ name: "too-big", format: "raw", capacityBytes: 128 * GiB })
      .catch((e: unknown) => e);
    expect(tooBig).toBeInstanceOf(VdiskError);
    expect((tooBig as VdiskError).reason).toBeDefined();
  });

  it("a repeated create with the same request id returns the same job and one volume", async () => {
    const spec = { name: "same", format: "raw" as const, capacityBytes: 16 * MiB };
    const first = client.createVolume(spec, { requestId: "req-same-1" });
    const second = client.createVolume(spec, { requestId: "req-same-1" });
    expect(await first.jobId).toBe(await second.jobId);
    await Promise.all([first.result, second.result]);
    const names: string[] = [];
    for await (const volume of client.listVolumes()) names.push(volume.name);
    expect(names.filter((n) => n === "same")).toHaveLength(1);
    await client.deleteVolume("same");
  });

  it("aborting a job call cancels the job on the server and leaves nothing behind", async () => {
    const abort = new AbortController();
    const handle = client.createVolume(
      { name: "slow", format: "raw", capacityBytes: 16 * GiB, preallocation: "full" },
      { signal: abort.signal },
    );
    const jobId = await handle.jobId;
    abort.abort();
    await expect(handle.result).rejects.toMatchObject({ code: "canceled" });
    let job = await client.getJob(jobId);
    for (let i = 0; i < 100 && (job.state === "running" || job.state === "queued"); i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      job = await client.getJob(jobId);
    }
    expect(job.state).toBe("cancelled");
    expect(job.cancelRequested).toBe(true);
    expect(job.error?.code).toBe("canceled");
    await expect(client.getVolume("slow")).rejects.toMatchObject({ code: "not_found" });
  });

  it("uploads a sparse file and downloads it back as a sparse file with the same bytes", async () => {
    const size = 8 * MiB;
    const source = join(poolDir, "..", `${poolDir.split("/").pop()}-upload.img`);
    const target = join(poolDir, "..", `${poolDir.split("/").pop()}-download.img`);
    const content = Buffer.alloc(size);
    content.fill(0x5a, 0, 100 * KiB);
    content.fill(0xa5, 6 * MiB, 6 * MiB + 3 * KiB);
    await writeFile(source, content);
    try {
      await client.createVolumeAndWait({ name: "files", format: "raw", capacityBytes: size });
      const written = await client.uploadFile("files", source);
      expect(written.writtenBytes).toBe(128 * KiB + 64 * KiB);
      const map = await client.getAllocationMap("files").collect();
      expect(map.summary.dataBytes).toBeLessThan(size / 2);

      const downloaded = await client.downloadFile("files", target);
      expect(downloaded.fileBytes).toBe(size);
      expect((await readFile(target)).equals(content)).toBe(true);
      expect((await stat(target)).blocks * 512).toBeLessThan(2 * MiB);
      await client.deleteVolume("files");
    } finally {
      await rm(source, { force: true });
      await rm(target, { force: true });
    }
  });
});
