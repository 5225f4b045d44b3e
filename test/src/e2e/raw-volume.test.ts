import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import {
  createVdiskClient,
  type Extent,
  GiB,
  type JobSnapshot,
  MiB,
  TiB,
  type VdiskClient,
} from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/**
 * Issue 2 acceptance: a real server on 127.0.0.1:0, driven only through the SDK. A 1 TiB thin raw volume is
 * created instantly, 1 MiB is written in its middle, the allocation map has exactly the three extents
 * qemu-img reports for the same file, a sparse read moves only that 1 MiB as bytes, and delete removes both
 * the file and the record. qemu-img is required (the map is compared with it); without it the test fails.
 */
const run = promisify(execFile);
const NAME = "big";
const DATA_AT = 512 * GiB;

let poolDir: string;
let server: RunningServer;
let client: VdiskClient;

function pattern(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + 7) % 251 || 1;
  return bytes;
}

beforeAll(async () => {
  await mkdir("/tmp/sdk", { recursive: true });
  poolDir = await mkdtemp("/tmp/sdk/e2e-raw-");
  server = await startServer({
    config: { listen: "127.0.0.1:0", pool: poolDir, maxCapacity: 256 * TiB, reflection: false, maxJobs: 2 },
    log: createLogger("silent", { pretty: false }),
  });
  client = createVdiskClient({ baseUrl: `http://127.0.0.1:${server.port}`, timeoutMs: 20_000 });
});

afterAll(async () => {
  client?.close();
  await server?.close();
  if (poolDir) await rm(poolDir, { recursive: true, force: true });
});

describe("raw volume end to end through the SDK", () => {
  const volumeFile = () => join(poolDir, `${NAME}.raw`);

  it("creates a 1 TiB thin raw volume instantly, with no physical allocation", async () => {
    const started = Date.now();
    const handle = client.createVolume({
      name: NAME,
      format: "raw",
      capacityBytes: TiB,
      preallocation: "off",
      labels: { suite: "e2e" },
    });
    const snapshots: JobSnapshot[] = [];
    for await (const snapshot of handle) snapshots.push(snapshot);
    const volume = await handle.result;
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(typeof (await handle.jobId)).toBe("string");
    expect(snapshots.at(-1)).toMatchObject({ state: "succeeded" });
    expect(volume).toMatchObject({
      name: NAME,
      format: "raw",
      capacityBytes: TiB,
      state: "ready",
      preallocation: "off",
      labels: { suite: "e2e" },
    });
    expect(volume.physicalBytes).toBeLessThan(MiB);

    const file = await stat(volumeFile());
    expect(file.size).toBe(TiB);
    expect(file.blocks * 512).toBeLessThan(MiB);
  });

  it("writes 1 MiB of data at 512 GiB", async () => {
    const result = await client.writeVolume(NAME, [{ offset: DATA_AT, data: pattern(MiB) }, { flush: true }]);
    expect(result.writtenBytes).toBe(MiB);
    expect(result.flushedBytes).toBeGreaterThanOrEqual(MiB);
    const volume = await client.getVolume(NAME);
    expect(volume.physicalBytes).toBeGreaterThanOrEqual(MiB);
    expect(volume.physicalBytes).toBeLessThan(4 * MiB);
  });

  it("maps exactly three merged extents, equal to qemu-img map of the same file", async () => {
    const { extents, summary } = await client.getAllocationMap(NAME).collect();
    expect(extents.map(({ offset, length, data, zero }) => ({ offset, length, data, zero }))).toEqual([
      { offset: 0, length: DATA_AT, data: false, zero: true },
      { offset: DATA_AT, length: MiB, data: true, zero: false },
      { offset: DATA_AT + MiB, length: TiB - DATA_AT - MiB, data: false, zero: true },
    ]);
    expect(extents.every((e) => e.depth === 0 && !e.compressed)).toBe(true);
    expect(summary.dataBytes).toBe(MiB);
    expect(summary.zeroBytes).toBe(TiB - MiB);

    const { stdout } = await run("qemu-img", ["map", "-U", "--output=json", "-f", "raw", volumeFile()]).catch(
      (error: unknown) => {
        throw new Error(
          `qemu-img is required to check map semantics (Debian: apt-get install qemu-utils): ${String(error)}`,
        );
      },
    );
    const qemu = JSON.parse(stdout) as Array<Record<string, number | boolean>>;
    const ours = extents.map((e: Extent) => {
      const entry: Record<string, number | boolean> = {
        start: e.offset,
        length: e.length,
        depth: e.depth,
        present: e.present,
        zero: e.zero,
        data: e.data,
      };
      if (e.hostOffset !== undefined) entry.offset = e.hostOffset;
      return entry;
    });
    expect(ours).toEqual(qemu.map(({ compressed: _compressed, ...rest }) => rest));
  });

  it("reads the whole volume sparsely: exactly the 1 MiB as bytes, the rest as zero runs", async () => {
    let dataBytes = 0;
    let zeroBytes = 0;
    let next = 0;
    const received = new Uint8Array(MiB);
    for await (const piece of client.readVolume(NAME, { sparse: true })) {
      expect(piece.offset).toBe(next);
      if ("zero" in piece) {
        zeroBytes += piece.length;
        next += piece.length;
      } else {
        expect(piece.offset).toBeGreaterThanOrEqual(DATA_AT);
        expect(piece.offset + piece.data.length).toBeLessThanOrEqual(DATA_AT + MiB);
        received.set(piece.data, piece.offset - DATA_AT);
        dataBytes += piece.data.length;
        next += piece.data.length;
      }
    }
    expect(next).toBe(TiB);
    expect(dataBytes).toBe(MiB);
    expect(zeroBytes).toBe(TiB - MiB);
    expect(Buffer.from(received).equals(Buffer.from(pattern(MiB)))).toBe(true);
  });

  it("delete removes the file and the record", async () => {
    await client.deleteVolume(NAME);
    await expect(client.getVolume(NAME)).rejects.toMatchObject({ code: "not_found" });
    await expect(stat(volumeFile())).rejects.toMatchObject({ code: "ENOENT" });
    expect((await readdir(poolDir)).filter((f) => f.startsWith(NAME))).toEqual([]);
    const names: string[] = [];
    for await (const volume of client.listVolumes()) names.push(volume.name);
    expect(names).not.toContain(NAME);
  });
});
