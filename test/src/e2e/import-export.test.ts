import { execFile } from "node:child_process";
import { mkdir, mkdtemp, open, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { createVdiskClient, MiB, TiB, type VdiskClient, VdiskError } from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/**
 * ImportVolume / ExportVolume end to end: a real server on 127.0.0.1:0 driven through the SDK, with
 * qemu-img / qemu-io as the oracle (images made by QEMU go in; what comes out must compare identical
 * and stay sparse). qemu-img is required: without it these tests fail.
 */
const run = promisify(execFile);
type Format = "raw" | "qcow2" | "vmdk";
const FORMATS: readonly Format[] = ["raw", "qcow2", "vmdk"];
const SIZE = 8 * MiB;
/** Guest ranges the sources hold data in; everything else is a hole. */
const DATA = [
  { offset: 0, length: MiB, pattern: "0xab" },
  { offset: 5 * MiB, length: MiB / 2, pattern: "0xcd" },
];

let scratch: string;
let poolDir: string;
let server: RunningServer;
let client: VdiskClient;

async function qemuImg(...args: string[]): Promise<string> {
  return (await run("qemu-img", args)).stdout;
}

async function makeSource(format: Format, file: string): Promise<void> {
  await qemuImg("create", "-q", "-f", format, file, String(SIZE));
  const writes = DATA.flatMap((d) => ["-c", `write -P ${d.pattern} ${d.offset} ${d.length}`]);
  await run("qemu-io", ["-f", format, ...writes, file]);
}

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
}

async function dataRanges(file: string, format: Format): Promise<Array<[number, number]>> {
  const entries = JSON.parse(await qemuImg("map", "-U", "--output=json", "-f", format, file)) as MapEntry[];
  return entries.filter((e) => e.data).map((e) => [e.start, e.start + e.length]);
}

/** Every range the exported file holds data in lies inside a range where the source held data. */
async function expectSparsenessKept(source: string, sourceFormat: Format, copy: string, copyFormat: Format) {
  const allowed = await dataRanges(source, sourceFormat);
  for (const [start, end] of await dataRanges(copy, copyFormat)) {
    const inside = allowed.some(([a, b]) => start >= a && end <= b);
    expect(inside, `${copyFormat} export has data at ${start}-${end} where the source had none`).toBe(true);
  }
}

async function expectIdentical(a: string, aFormat: Format, b: string, bFormat: Format): Promise<void> {
  const { stdout } = await run("qemu-img", ["compare", "-U", "-f", aFormat, "-F", bFormat, a, b]);
  expect(stdout).toContain("identical");
}

beforeAll(async () => {
  await mkdir("/tmp/ie", { recursive: true });
  scratch = await mkdtemp("/tmp/ie/files-");
  poolDir = await mkdtemp("/tmp/ie/pool-");
  server = await startServer({
    config: { listen: "127.0.0.1:0", pool: poolDir, maxCapacity: 256 * TiB, reflection: false, maxJobs: 2 },
    log: createLogger("silent", { pretty: false }),
  });
  client = createVdiskClient({ baseUrl: `http://127.0.0.1:${server.port}`, timeoutMs: 20_000 });
  for (const format of FORMATS) await makeSource(format, join(scratch, `src.${format}`));
});

afterAll(async () => {
  client?.close();
  await server?.close();
  for (const dir of [poolDir, scratch]) if (dir) await rm(dir, { recursive: true, force: true });
});

describe("ImportVolume / ExportVolume round trips", () => {
  for (const source of FORMATS) {
    it(`imports a ${source} image and exports it as raw, qcow2 and vmdk, identical and sparse`, async () => {
      const srcFile = join(scratch, `src.${source}`);
      const name = `rt-${source}`;
      const volume = await client.importFile(srcFile, { name, format: source, labels: { suite: "ie" } });
      expect(volume).toMatchObject({ name, format: source, capacityBytes: SIZE, state: "ready" });
      for (const target of FORMATS) {
        const out = join(scratch, `${name}.out.${target}`);
        await client.exportFile(name, out, { format: target });
        await expectIdentical(srcFile, source, out, target);
        await expectSparsenessKept(srcFile, source, out, target);
      }
      const compressed = join(scratch, `${name}.out-c.qcow2`);
      await client.exportFile(name, compressed, { format: "qcow2", compress: true });
      await expectIdentical(srcFile, source, compressed, "qcow2");
      await qemuImg("check", "-q", "-f", "qcow2", compressed);
      expect(await readdir(join(poolDir, ".vdisk", "tmp"))).toEqual([]);
    });
  }

  it("converts on import when target_format differs", async () => {
    const srcFile = join(scratch, "src.qcow2");
    const volume = await client.importFile(srcFile, { name: "conv", format: "qcow2", targetFormat: "vmdk" });
    expect(volume).toMatchObject({ format: "vmdk", capacityBytes: SIZE });
    await expectIdentical(srcFile, "qcow2", join(poolDir, "conv.vmdk"), "vmdk");
    await expectSparsenessKept(srcFile, "qcow2", join(poolDir, "conv.vmdk"), "vmdk");
    await expect(client.importFile(srcFile, { name: "conv", format: "qcow2" })).rejects.toMatchObject({
      code: "already_exists",
      reason: "VOLUME_EXISTS",
    });
  });

  it("converts on import to raw (written with O_DIRECT), identical and sparse", async () => {
    const srcFile = join(scratch, "src.qcow2");
    const volume = await client.importFile(srcFile, {
      name: "conv-raw",
      format: "qcow2",
      targetFormat: "raw",
    });
    expect(volume).toMatchObject({ format: "raw", capacityBytes: SIZE });
    await expectIdentical(srcFile, "qcow2", join(poolDir, "conv-raw.raw"), "raw");
    await expectSparsenessKept(srcFile, "qcow2", join(poolDir, "conv-raw.raw"), "raw");
  });

  it("answers a retried import (same request_id) with the volume it already made", async () => {
    const srcFile = join(scratch, "src.raw");
    const first = await client.importFile(
      srcFile,
      { name: "retried", format: "raw" },
      { requestId: "ie-retry-1" },
    );
    const again = await client.importFile(
      srcFile,
      { name: "retried", format: "raw" },
      { requestId: "ie-retry-1" },
    );
    expect(again.uid).toBe(first.uid);
    await expect(
      client.importFile(srcFile, { name: "retried", format: "raw" }, { requestId: "ie-retry-2" }),
    ).rejects.toMatchObject({ code: "already_exists", reason: "VOLUME_EXISTS" });
  });

  it("exports streamOptimized vmdk ending in footer and end-of-stream markers, and imports it back", async () => {
    const out = join(scratch, "stream.vmdk");
    await client.exportFile("rt-raw", out, { format: "vmdk" });
    const handle = await open(out, "r");
    let tail: Buffer;
    try {
      const { size } = await handle.stat();
      expect(size % 512).toBe(0);
      tail = Buffer.alloc(1536);
      await handle.read(tail, 0, 1536, size - 1536);
    } finally {
      await handle.close();
    }
    const footerMarker = tail.subarray(0, 512);
    expect(footerMarker.readBigUInt64LE(0)).toBe(1n); // one sector of footer follows
    expect(footerMarker.readUInt32LE(8)).toBe(0);
    expect(footerMarker.readUInt32LE(12)).toBe(3); // MARKER_FOOTER
    expect(tail.subarray(512, 516).toString("latin1")).toBe("KDMV");
    expect(tail.subarray(1024).every((b) => b === 0)).toBe(true); // end-of-stream: type 0, all zero
    const info = JSON.parse(await qemuImg("info", "--output=json", out)) as {
      "format-specific"?: { data?: { "create-type"?: string } };
    };
    expect(info["format-specific"]?.data?.["create-type"]).toBe("streamOptimized");

    const volume = await client.importFile(out, { name: "from-stream", format: "vmdk" });
    expect(volume).toMatchObject({ format: "vmdk", capacityBytes: SIZE });
    const back = join(scratch, "from-stream.raw");
    await client.exportFile("from-stream", back, { format: "raw" });
    await expectIdentical(join(scratch, "src.raw"), "raw", back, "raw");
  });
});

describe("ImportVolume refuses hostile uploads and leaves nothing behind", () => {
  let hostilePool: string;
  let hostileServer: RunningServer;
  let hostileClient: VdiskClient;

  beforeAll(async () => {
    hostilePool = await mkdtemp("/tmp/ie/hostile-pool-");
    hostileServer = await startServer({
      config: {
        listen: "127.0.0.1:0",
        pool: hostilePool,
        maxCapacity: 256 * TiB,
        reflection: false,
        maxJobs: 2,
      },
      log: createLogger("silent", { pretty: false }),
    });
    hostileClient = createVdiskClient({
      baseUrl: `http://127.0.0.1:${hostileServer.port}`,
      timeoutMs: 20_000,
    });
  });

  afterAll(async () => {
    hostileClient?.close();
    await hostileServer?.close();
    if (hostilePool) await rm(hostilePool, { recursive: true, force: true });
  });

  async function expectRefused(
    file: string,
    format: Format,
    code: "invalid_argument" | "resource_exhausted",
    reason?: string,
  ): Promise<void> {
    const name = "hostile";
    const err = await hostileClient.importFile(file, { name, format }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(VdiskError);
    const e = err as VdiskError;
    expect(e.code).toBe(code);
    expect(e.reason).toBeDefined();
    if (reason !== undefined) expect(e.reason).toBe(reason);
    expect(await readdir(join(hostilePool, ".vdisk", "tmp"))).toEqual([]);
    expect((await readdir(hostilePool)).filter((f) => f !== ".vdisk")).toEqual([]);
    await expect(hostileClient.getVolume(name)).rejects.toMatchObject({ code: "not_found" });
  }

  it("refuses a qcow2 that names a backing file", async () => {
    const base = join(scratch, "base.raw");
    const child = join(scratch, "child.qcow2");
    await qemuImg("create", "-q", "-f", "raw", base, "1M");
    await qemuImg("create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", child);
    await expectRefused(child, "qcow2", "invalid_argument");
  });

  it("refuses a raw upload that is really a qcow2 image", async () => {
    await expectRefused(join(scratch, "src.qcow2"), "raw", "invalid_argument");
  });

  it("refuses a monolithicFlat vmdk descriptor", async () => {
    const flat = join(scratch, "flat.vmdk");
    await qemuImg("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", flat, "1M");
    await expectRefused(flat, "vmdk", "invalid_argument");
  });

  it("refuses a 1 PiB qcow2 in a small file as over the quota", async () => {
    const huge = join(scratch, "huge.qcow2");
    await qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", huge, "1P");
    await expectRefused(huge, "qcow2", "resource_exhausted", "VIRTUAL_SIZE_OVER_QUOTA");
  });

  it("refuses an upload that ends before the announced length", async () => {
    const err = await hostileClient
      .importVolume({ name: "short", format: "raw", uploadBytes: 4096 }, [new Uint8Array(1024).fill(1)])
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toMatchObject({ code: "invalid_argument", reason: "UPLOAD_INCOMPLETE" });
    expect(await readdir(join(hostilePool, ".vdisk", "tmp"))).toEqual([]);
  });

  it("removes the staging file when the client cancels mid-upload", async () => {
    const controller = new AbortController();
    let sent = 0;
    async function* slowUpload(): AsyncGenerator<Uint8Array> {
      for (;;) {
        yield new Uint8Array(MiB).fill(7);
        sent++;
        if (sent === 3) {
          // Give the server time to stage what was sent, then go away.
          await new Promise((resolve) => setTimeout(resolve, 200));
          controller.abort();
          await new Promise((resolve) => setTimeout(resolve, 1000));
        }
      }
    }
    await expect(
      hostileClient.importVolume({ name: "cancelled", format: "raw" }, slowUpload(), {
        signal: controller.signal,
      }),
    ).rejects.toBeDefined();
    // The server learns of the cancel asynchronously: wait (bounded) for its cleanup.
    for (let i = 0; i < 50 && (await readdir(join(hostilePool, ".vdisk", "tmp"))).length > 0; i++)
      await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await readdir(join(hostilePool, ".vdisk", "tmp"))).toEqual([]);
    await expect(hostileClient.getVolume("cancelled")).rejects.toMatchObject({ code: "not_found" });
  });

  it("refuses an upload longer than it announced", async () => {
    const err = await hostileClient
      .importVolume({ name: "liar", format: "raw", uploadBytes: 512 }, [new Uint8Array(1024).fill(1)])
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toMatchObject({ code: "resource_exhausted", reason: "UPLOAD_TOO_LARGE" });
    expect(await readdir(join(hostilePool, ".vdisk", "tmp"))).toEqual([]);
  });
});
