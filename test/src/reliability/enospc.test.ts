import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { type CreateVolumeSpec, createVdiskClient, MiB, type VdiskClient } from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  eventuallyHealth,
  expectNothingHalfMade,
  expectOldOrNew,
  failureOf,
  pattern,
  qemuCheck,
  readAll,
} from "./pool-checks.js";
import { mountExt4, mountTmpfs, type SmallFs } from "./small-fs.js";

/**
 * Issue 7: ENOSPC on a small real filesystem (tmpfs, and loop-mounted ext4 for real block allocation).
 * With the disk full, create (every format × preallocation), clone, import and write fail with
 * RESOURCE_EXHAUSTED and leave nothing half-made; acknowledged data survives; deleting still works; and
 * once space is freed the same operations succeed and read back.
 */
const run = promisify(execFile);
const SPACE_REASONS = ["INSUFFICIENT_SPACE", "HOST_ENOSPC"];

type Format = "raw" | "qcow2" | "vmdk";
type Logger = ReturnType<typeof createLogger>;

/** The server's logger, with its warning messages also kept in `seen` (what the client can't observe). */
function recordingWarnings(log: Logger, seen: string[]): Logger {
  return new Proxy(log, {
    get(target, prop, receiver) {
      const value: unknown = Reflect.get(target, prop, receiver);
      if (prop !== "warn" || typeof value !== "function") return value;
      return (obj: unknown, msg?: string, ...rest: unknown[]) => {
        seen.push(typeof obj === "string" ? obj : String(msg));
        return value.call(target, obj, msg, ...rest);
      };
    },
  });
}

/** Creations tried on a full disk and again after space is freed. */
const CREATES: CreateVolumeSpec[] = [
  { name: "new-raw", format: "raw", capacityBytes: 2 * MiB },
  { name: "new-raw-falloc", format: "raw", capacityBytes: 2 * MiB, preallocation: "falloc" },
  { name: "new-raw-full", format: "raw", capacityBytes: 2 * MiB, preallocation: "full" },
  { name: "new-q", format: "qcow2", capacityBytes: 2 * MiB },
  { name: "new-q-meta", format: "qcow2", capacityBytes: 2 * MiB, preallocation: "metadata" },
  { name: "new-q-full", format: "qcow2", capacityBytes: 2 * MiB, preallocation: "full" },
  { name: "new-vmdk", format: "vmdk", capacityBytes: 2 * MiB },
];

/** Volumes written before the disk fills: their acknowledged bytes must survive everything. */
const KEEP_RAW = { name: "keep-raw", size: 2 * MiB, data: pattern(MiB, 1), at: 0 };
const KEEP_Q = { name: "keep-q", size: 8 * MiB, data: pattern(MiB, 2), at: MiB };

/** Writes into unallocated ranges: they need new blocks (raw) or new clusters and metadata (qcow2). */
const WRITES = [
  { volume: KEEP_RAW.name, size: KEEP_RAW.size, offset: MiB, data: pattern(MiB, 3) },
  { volume: KEEP_Q.name, size: KEEP_Q.size, offset: 3 * MiB, data: pattern(MiB, 4) },
];

for (const kind of ["tmpfs", "ext4"] as const) {
  describe(`ENOSPC on a small ${kind}`, () => {
    let fs: SmallFs;
    let server: RunningServer;
    let client: VdiskClient;
    let pool: string;
    let scratch: string;
    /** A qcow2 image file (outside the small filesystem) to import: 2 MiB of 0x5a in a 4 MiB disk. */
    let qcow2Image: string;
    /** A 4 MiB raw image file with no zero blocks, too big for what is left in the "midway" case. */
    let rawImage: string;
    /** What the pool must hold at each check: name → format. */
    const expected: Record<string, Format> = {};
    const warnings: string[] = [];

    async function start(): Promise<void> {
      server = await startServer({
        config: { listen: "127.0.0.1:0", pool, maxCapacity: 1 << 30, reflection: false, maxJobs: 2 },
        log: recordingWarnings(
          createLogger((process.env.VDISK_TEST_LOG ?? "silent") as "silent", { pretty: false }),
          warnings,
        ),
        shutdownTimeoutMs: 2000,
        poolProbeMs: 100,
      });
      client = createVdiskClient({ baseUrl: `http://127.0.0.1:${server.port}`, timeoutMs: 30_000 });
    }

    async function expectKeptData(): Promise<void> {
      for (const keep of [KEEP_RAW, KEEP_Q]) {
        const content = await readAll(client, keep.name, keep.size);
        expect(content.subarray(keep.at, keep.at + keep.data.length).equals(keep.data), keep.name).toBe(true);
      }
      expect(await qemuCheck(join(pool, `${KEEP_Q.name}.qcow2`), "qcow2")).toMatch(/clean|leaks/);
    }

    async function expectOutOfSpace(what: string, promise: Promise<unknown>): Promise<void> {
      const err = await failureOf(promise);
      expect({ what, code: err.code }).toEqual({ what, code: "resource_exhausted" });
      expect(SPACE_REASONS, `${what}: reason ${err.reason}`).toContain(err.reason);
    }

    beforeAll(async () => {
      fs = kind === "tmpfs" ? await mountTmpfs(32) : await mountExt4(40);
      pool = join(fs.dir, "pool");
      await mkdir("/tmp/vdisk-enospc", { recursive: true });
      scratch = await mkdtemp("/tmp/vdisk-enospc/images-");
      qcow2Image = join(scratch, "upload.qcow2");
      await run("qemu-img", ["create", "-q", "-f", "qcow2", qcow2Image, "4M"]);
      await run("qemu-io", ["-f", "qcow2", "-c", "write -P 0x5a 0 2M", qcow2Image]);
      rawImage = join(scratch, "upload.raw");
      await writeFile(rawImage, pattern(4 * MiB, 9));
      await start();
    });

    afterAll(async () => {
      client?.close();
      await server?.close();
      await fs?.unmount();
      if (scratch) await rm(scratch, { recursive: true, force: true });
    });

    it("volumes written before the disk fills", async () => {
      for (const keep of [KEEP_RAW, KEEP_Q]) {
        const format = keep === KEEP_RAW ? "raw" : "qcow2";
        await client.createVolume({ name: keep.name, format, capacityBytes: keep.size }).result;
        await client.writeVolume(keep.name, [{ offset: keep.at, data: keep.data }, { flush: true }]);
        expected[keep.name] = format;
      }
      await client.createVolume({ name: "victim", format: "raw", capacityBytes: MiB }).result;
      await client.writeVolume("victim", [{ offset: 0, data: pattern(MiB, 5) }, { flush: true }]);
      expected.victim = "raw";
      await expectNothingHalfMade(client, pool, expected);
    });

    it("on a full disk, create, clone and import fail with RESOURCE_EXHAUSTED and leave nothing behind", async () => {
      await fs.fill();
      expect(await fs.freeBytes()).toBeLessThan(64 * 1024);
      expect(await eventuallyHealth(server.port, "NOT_SERVING")).toBe("NOT_SERVING");
      for (const spec of CREATES) {
        await expectOutOfSpace(`create ${spec.name}`, client.createVolume(spec).result);
        await expectNothingHalfMade(client, pool, expected);
      }
      await expectOutOfSpace(
        "full clone",
        client.cloneVolume(KEEP_RAW.name, "copy", { format: "qcow2" }).result,
      );
      await expectOutOfSpace(
        "full clone to raw",
        client.cloneVolume(KEEP_Q.name, "copy-raw", { format: "raw" }).result,
      );
      await expectOutOfSpace(
        "linked clone",
        client.cloneVolume(KEEP_Q.name, "linked", { mode: "linked" }).result,
      );
      await expectOutOfSpace("import", client.importFile(qcow2Image, { name: "imported", format: "qcow2" }));
      await expectOutOfSpace(
        "import + convert",
        client.importFile(qcow2Image, { name: "imported-raw", format: "qcow2", targetFormat: "raw" }),
      );
      await expectNothingHalfMade(client, pool, expected);
      await expectKeptData();
    });

    it("on a full disk, writes fail with RESOURCE_EXHAUSTED; acknowledged data survives", async () => {
      await fs.fill();
      for (const w of WRITES) {
        const before = (await readAll(client, w.volume, w.size)).subarray(w.offset, w.offset + w.data.length);
        const err = await failureOf(
          client.writeVolume(w.volume, [{ offset: w.offset, data: w.data }, { flush: true }]),
        );
        expect({ volume: w.volume, code: err.code, reason: err.reason }).toEqual({
          volume: w.volume,
          code: "resource_exhausted",
          reason: "HOST_ENOSPC",
        });
        const after = (await readAll(client, w.volume, w.size)).subarray(w.offset, w.offset + w.data.length);
        expectOldOrNew(after, Buffer.from(before), w.data, `${w.volume} after the failed write`);
      }
      await expectNothingHalfMade(client, pool, expected);
      await expectKeptData();
    });

    it("on a full disk, DeleteVolume still works (the catalog itself has no room to grow)", async () => {
      await fs.fill();
      warnings.length = 0;
      await client.deleteVolume("victim");
      // The catalog really had no room: the server had to free the file's space before dropping the record.
      expect(warnings).toContain("pool full: deleting the volume's file before its record");
      delete expected.victim;
      await expectNothingHalfMade(client, pool, expected);
      await expectKeptData();
    });

    it("when the disk runs out midway (admitted, then ENOSPC), the operation fails cleanly", async () => {
      // About 3 MiB free: above the server's reserve, so admission lets the work start.
      await fs.fill();
      await fs.release(3 * MiB);
      await expectOutOfSpace(
        "import of a 4 MiB upload",
        client.importFile(rawImage, { name: "too-big", format: "raw" }),
      );
      await expectNothingHalfMade(client, pool, expected);

      await fs.fill();
      await fs.release(3 * MiB);
      const free = await fs.freeBytes();
      // Each fits (with the reserve) on its own, not all together: some run out mid-preallocation
      // (fallocate on one, written zeros on the others).
      const size = Math.floor(((free - MiB) * 0.75) / 4096) * 4096;
      const racers: CreateVolumeSpec[] = [
        { name: "race-falloc", format: "raw", capacityBytes: size, preallocation: "falloc" },
        { name: "race-full", format: "raw", capacityBytes: size, preallocation: "full" },
        { name: "race-q", format: "qcow2", capacityBytes: size, preallocation: "full" },
      ];
      const outcomes = await Promise.allSettled(racers.map((spec) => client.createVolume(spec).result));
      const failed = outcomes.filter((o) => o.status === "rejected");
      expect(failed.length, "the preallocations cannot all fit").toBeGreaterThan(0);
      for (const [i, o] of outcomes.entries()) {
        const spec = racers[i] as CreateVolumeSpec;
        if (o.status === "fulfilled") expected[spec.name] = spec.format as Format;
        else await expectOutOfSpace(`racing create ${spec.name}`, Promise.reject(o.reason));
      }
      await expectNothingHalfMade(client, pool, expected);

      await fs.fill();
      await fs.release(3 * MiB);
      const big = { volume: KEEP_Q.name, offset: 4 * MiB, data: pattern(4 * MiB, 6) };
      const err = await failureOf(
        client.writeVolume(big.volume, [{ offset: big.offset, data: big.data }, { flush: true }]),
      );
      expect({ code: err.code, reason: err.reason }).toEqual({
        code: "resource_exhausted",
        reason: "HOST_ENOSPC",
      });
      const after = (await readAll(client, big.volume, KEEP_Q.size)).subarray(big.offset);
      expectOldOrNew(after, Buffer.alloc(big.data.length), big.data, "keep-q after running out mid-write");
      await expectKeptData();

      for (const { name } of racers) {
        if (expected[name] === undefined) continue;
        if (expected[name] === "qcow2")
          expect(await qemuCheck(join(pool, `${name}.qcow2`), "qcow2")).toBe("clean");
        await client.deleteVolume(name);
        delete expected[name];
      }
    });

    it("a server restarted while the disk is full starts, reconciles and serves what it has", async () => {
      await fs.fill();
      client.close();
      await server.close();
      await start();
      await expectNothingHalfMade(client, pool, expected);
      await expectKeptData();
      expect(await eventuallyHealth(server.port, "NOT_SERVING")).toBe("NOT_SERVING");
    });

    it("after the ballast is deleted, the same operations succeed and read back", async () => {
      await fs.free();
      // Readiness follows the pool: the health probe can write again.
      expect(await eventuallyHealth(server.port, "SERVING")).toBe("SERVING");
      for (const w of WRITES)
        await client.writeVolume(w.volume, [{ offset: w.offset, data: w.data }, { flush: true }]);
      for (const spec of CREATES) {
        const volume = await client.createVolume(spec).result;
        expect({ name: volume.name, state: volume.state }).toEqual({ name: spec.name, state: "ready" });
        expected[spec.name] = spec.format as Format;
        expect(
          (await readAll(client, spec.name, spec.capacityBytes)).equals(Buffer.alloc(spec.capacityBytes)),
        ).toBe(true);
      }
      await client.cloneVolume(KEEP_RAW.name, "copy", { format: "qcow2" }).result;
      expected.copy = "qcow2";
      await client.cloneVolume(KEEP_Q.name, "copy-raw", { format: "raw" }).result;
      expected["copy-raw"] = "raw";
      await client.cloneVolume(KEEP_Q.name, "linked", { mode: "linked" }).result;
      expected.linked = "qcow2";
      await client.importFile(qcow2Image, { name: "imported", format: "qcow2" });
      expected.imported = "qcow2";
      await client.importFile(qcow2Image, { name: "imported-raw", format: "qcow2", targetFormat: "raw" });
      expected["imported-raw"] = "raw";
      await client.importFile(rawImage, { name: "too-big", format: "raw" });
      expected["too-big"] = "raw";

      const keepRaw = await readAll(client, KEEP_RAW.name, KEEP_RAW.size);
      expect(keepRaw.equals(Buffer.concat([KEEP_RAW.data, WRITES[0]?.data ?? Buffer.alloc(0)]))).toBe(true);
      expect((await readAll(client, "copy", KEEP_RAW.size)).equals(keepRaw)).toBe(true);
      const keepQ = await readAll(client, KEEP_Q.name, KEEP_Q.size);
      expect(keepQ.subarray(3 * MiB, 4 * MiB).equals(WRITES[1]?.data ?? Buffer.alloc(0))).toBe(true);
      expect((await readAll(client, "linked", KEEP_Q.size)).equals(keepQ)).toBe(true);
      expect((await readAll(client, "copy-raw", KEEP_Q.size)).equals(keepQ)).toBe(true);
      const uploaded = Buffer.concat([Buffer.alloc(2 * MiB, 0x5a), Buffer.alloc(2 * MiB)]);
      expect((await readAll(client, "imported", 4 * MiB)).equals(uploaded)).toBe(true);
      expect((await readAll(client, "imported-raw", 4 * MiB)).equals(uploaded)).toBe(true);
      expect((await readAll(client, "too-big", 4 * MiB)).equals(pattern(4 * MiB, 9))).toBe(true);

      // The clusters the failed qcow2 writes allocated are leaks at most, and a leaks-only repair reclaims them.
      const report = await client.checkVolume(KEEP_Q.name, { repair: "leaks" }).result;
      expect(report.corruptions).toBe(0);
      for (const [name, format] of Object.entries(expected)) {
        if (format === "raw") continue;
        expect(await qemuCheck(join(pool, `${name}.${format}`), format), name).toBe("clean");
      }
      await expectNothingHalfMade(client, pool, expected);
    });

    it("a volume that overlays read through also recovers from a failed write once space is freed", async () => {
      // "linked" is open and holds keep-q's image as its backing.
      const throughOverlay = await readAll(client, "linked", KEEP_Q.size);
      const write = { offset: 6 * MiB, data: pattern(MiB, 7) };
      await fs.fill();
      const err = await failureOf(
        client.writeVolume(KEEP_Q.name, [{ offset: write.offset, data: write.data }, { flush: true }]),
      );
      expect({ code: err.code, reason: err.reason }).toEqual({
        code: "resource_exhausted",
        reason: "HOST_ENOSPC",
      });
      await fs.free();
      await client.writeVolume(KEEP_Q.name, [{ offset: write.offset, data: write.data }, { flush: true }]);
      write.data.copy(throughOverlay, write.offset);
      expect((await readAll(client, "linked", KEEP_Q.size)).equals(throughOverlay)).toBe(true);
      await expectKeptData();
      expect(await qemuCheck(join(pool, "linked.qcow2"), "qcow2")).toBe("clean");
    });

    it("a restart on the same pool finds the catalog and the pool in agreement", async () => {
      client.close();
      await server.close();
      await start();
      await expectNothingHalfMade(client, pool, expected);
      await expectKeptData();
    });
  });
}
