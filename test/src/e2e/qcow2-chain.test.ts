import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { createVdiskClient, type Extent, type VdiskClient } from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/**
 * Issue 3, through the server: a three-layer qcow2 chain whose base was written by qemu-io (not by vdisk).
 * The allocation map reports the right depth per extent — the same as `qemu-img map` of the top file —
 * and with base_volume only what lies above the base is present.
 */
const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 4 * MiB;

let pool: string;
let server: RunningServer;
let client: VdiskClient;

const qemuMap = async (file: string) =>
  JSON.parse((await run("qemu-img", ["map", "-U", "--output=json", "-f", "qcow2", file])).stdout) as {
    start: number;
    length: number;
    depth: number;
    present: boolean;
    zero: boolean;
    data: boolean;
  }[];

const fill = (length: number, byte: number) => new Uint8Array(length).fill(byte);

async function start(): Promise<void> {
  server = await startServer({
    config: { listen: "127.0.0.1:0", pool, maxCapacity: 2 ** 40, reflection: false, maxJobs: 2 },
    log: createLogger("silent", { pretty: false }),
  });
  client = createVdiskClient({ baseUrl: `http://127.0.0.1:${server.port}`, timeoutMs: 30_000 });
}

beforeAll(async () => {
  pool = await mkdtemp(join(tmpdir(), "vdisk-chain-"));
  await start();
  // The base volume is made by vdisk; its data is written by qemu-io while vdisk is stopped (a running
  // vdisk holds the image open and locked, as QEMU would), then vdisk starts again on the same pool.
  await client.createVolume({ name: "base", format: "qcow2", capacityBytes: SIZE }).result;
  client.close();
  await server.close();
  await run("qemu-io", ["-f", "qcow2", "-c", "write -P 0x11 0 128k", "-c", "write -z 1M 64k", "-c", "write -P 0x12 2M 64k", join(pool, "base.qcow2")]);
  await start();

  await client.createVolume({ name: "mid", format: "qcow2", capacityBytes: SIZE, backingVolume: "base" }).result;
  await client.writeVolume("mid", [{ offset: 64 * KiB, data: fill(128 * KiB, 0x22) }]);
  await client.createVolume({ name: "top", format: "qcow2", capacityBytes: SIZE, backingVolume: "mid" }).result;
  await client.writeVolume("top", [{ offset: 3 * MiB, data: fill(64 * KiB, 0x33) }, { flush: true }]);
}, 120_000);

afterAll(async () => {
  client?.close();
  await server?.close();
  if (pool) await rm(pool, { recursive: true, force: true });
});

describe("a qcow2 chain through the server", () => {
  it("reports the depth of every extent exactly as qemu-img map does for the top file", async () => {
    const { extents } = await client.getAllocationMap("top").collect();
    const theirs = await qemuMap(join(pool, "top.qcow2"));
    const ours = extents.map((e: Extent) => ({
      start: e.offset,
      length: e.length,
      depth: e.depth,
      present: e.present,
      zero: e.zero,
      data: e.data,
    }));
    expect(ours).toEqual(theirs.map(({ start, length, depth, present, zero, data }) => ({ start, length, depth, present, zero, data })));
    // The layers really are spread over the chain: top (0), mid (1) and qemu-io's base (2).
    expect(new Set(ours.filter((e) => e.present).map((e) => e.depth))).toEqual(new Set([0, 1, 2]));
    expect(ours.find((e) => e.start === 3 * MiB)).toMatchObject({ depth: 0, data: true });
    expect(ours.find((e) => e.start === 64 * KiB)).toMatchObject({ depth: 1, data: true, length: 128 * KiB });
    expect(ours.find((e) => e.start === 0)).toMatchObject({ depth: 2, data: true, length: 64 * KiB });
    expect(ours.find((e) => e.start === MiB)).toMatchObject({ depth: 2, zero: true, data: false, present: true });
  });

  it("with base_volume reports only what lies above the base", async () => {
    const { extents } = await client.getAllocationMap("top", { baseVolume: "base" }).collect();
    const present = extents.filter((e) => e.present).map((e) => [e.offset, e.length, e.depth]);
    expect(present).toEqual([
      [64 * KiB, 128 * KiB, 1],
      [3 * MiB, 64 * KiB, 0],
    ]);
    // Everything the base holds (its data at 0 and 2 MiB, its zero cluster at 1 MiB) is not present above it.
    for (const at of [0, MiB, 2 * MiB]) {
      const e = extents.find((x) => x.offset <= at && at < x.offset + x.length);
      expect(e, `extent at ${at}`).toMatchObject({ present: false, data: false });
    }
    expect(extents.reduce((n, e) => n + e.length, 0)).toBe(SIZE);
  });

  it("reads the chain's content as qemu-img does", async () => {
    const out = join(pool, "top-as-raw.img");
    await run("qemu-img", ["convert", "-U", "-f", "qcow2", "-O", "raw", join(pool, "top.qcow2"), out]);
    const { readFile } = await import("node:fs/promises");
    const expected = await readFile(out);
    const got = Buffer.alloc(SIZE);
    for await (const piece of client.readVolume("top", { sparse: true })) {
      if ("data" in piece) got.set(piece.data, piece.offset);
    }
    expect(got.equals(expected)).toBe(true);
  });
});
