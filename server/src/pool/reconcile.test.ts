import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { EngineError } from "@vdisk/engine";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { SqliteCatalog } from "../catalog/sqlite-catalog.js";
import { jobRecord, volumeRecord } from "../catalog/test-records.js";
import { Pool } from "./pool.js";
import { reconcile } from "./reconcile.js";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

describe("reconcile", () => {
  it("removes interrupted creations, fails running jobs, clears temp files and reports unknown files", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "vdisk-pool-"));
    dirs.push(root);
    const pool = new Pool(root);
    await pool.init();
    const catalog = SqliteCatalog.open(pool.catalogPath);

    catalog.insertVolume(volumeRecord("ready", { uid: "1" }));
    fs.writeFileSync(pool.volumePath("ready", "raw"), "data");
    catalog.insertVolume(volumeRecord("half", { uid: "2", state: "CREATING" }));
    fs.writeFileSync(pool.tempPath("half", "raw"), "partial");
    catalog.insertVolume(volumeRecord("renamed", { uid: "3", state: "CREATING" }));
    fs.writeFileSync(pool.volumePath("renamed", "raw"), "complete but never marked READY");
    catalog.insertVolume(volumeRecord("going", { uid: "4", state: "DELETING" }));
    fs.writeFileSync(pool.volumePath("going", "raw"), "x");
    fs.writeFileSync(path.join(pool.tmpDir, "junk.tmp"), "x");
    fs.writeFileSync(path.join(root, "operator.img"), "not ours");

    catalog.saveJob(jobRecord("j-create", { volume: "half", state: "RUNNING" }));
    catalog.saveJob(
      jobRecord("j-check", {
        volume: "ready",
        state: "RUNNING",
        kind: "CHECK_VOLUME",
        createTime: new Date(2),
      }),
    );
    catalog.saveJob(
      jobRecord("j-queued", {
        volume: "ready",
        state: "QUEUED",
        kind: "CHECK_VOLUME",
        createTime: new Date(3),
      }),
    );
    catalog.insertVolume(volumeRecord("grown", { uid: "5", capacity: 4096 }));
    fs.writeFileSync(pool.volumePath("grown", "raw"), Buffer.alloc(3 * 4096));
    catalog.saveJob(
      jobRecord("j-grow", {
        volume: "grown",
        state: "RUNNING",
        kind: "RESIZE_VOLUME",
        createTime: new Date(5),
      }),
    );
    catalog.insertVolume(volumeRecord("shrunk", { uid: "6", capacity: 4 * 4096 }));
    fs.writeFileSync(pool.volumePath("shrunk", "raw"), Buffer.alloc(4096));
    catalog.saveJob(
      jobRecord("j-shrink", {
        volume: "shrunk",
        state: "RUNNING",
        kind: "RESIZE_VOLUME",
        createTime: new Date(6),
      }),
    );
    catalog.saveJob(jobRecord("j-done", { volume: "ready", state: "SUCCEEDED", createTime: new Date(4) }));

    const log = pino({ level: "silent" });
    const report = await reconcile(catalog, pool, log);

    expect(report.removedCreating.sort()).toEqual(["half", "renamed"]);
    expect(report.finishedDeleting).toEqual(["going"]);
    expect(report.failedJobs.sort()).toEqual(["j-check", "j-create", "j-grow", "j-queued", "j-shrink"]);
    expect(report.resizesRolledBack.sort()).toEqual(["grown", "shrunk"]);
    expect(fs.statSync(pool.volumePath("grown", "raw")).size).toBe(4096);
    expect(catalog.getVolume("shrunk")?.capacity).toBe(4096);
    // junk.tmp and the interrupted creation's temp file.
    expect(report.removedTempFiles).toBe(2);
    expect(report.unknownFiles).toEqual(["operator.img"]);

    expect(catalog.listVolumes({ limit: 10 }).map((v) => v.name)).toEqual(["grown", "ready", "shrunk"]);
    expect(fs.readdirSync(pool.tmpDir)).toEqual([]);
    expect(fs.readdirSync(root).sort()).toEqual([
      ".vdisk",
      "grown.raw",
      "operator.img",
      "ready.raw",
      "shrunk.raw",
    ]);
    const createJob = catalog.getJob("j-create");
    expect(createJob).toMatchObject({
      state: "FAILED",
      error: { message: "server restarted during creation", reason: "SERVER_RESTARTED" },
    });
    expect(createJob?.endTime).toBeInstanceOf(Date);
    expect(catalog.getJob("j-check")?.state).toBe("FAILED");
    expect(catalog.getJob("j-done")?.state).toBe("SUCCEEDED");
    catalog.close();
  });

  it("records the size an interrupted qcow2 resize already wrote into the header (found by the crash loop)", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "vdisk-pool-"));
    dirs.push(root);
    const pool = new Pool(root);
    await pool.init();
    const catalog = SqliteCatalog.open(pool.catalogPath);
    const MiB = 1024 * 1024;
    const qcow2Header = (size: number) => {
      const header = Buffer.alloc(104);
      header.writeUInt32BE(0x514649fb, 0);
      header.writeUInt32BE(3, 4);
      header.writeBigUInt64BE(BigInt(size), 24);
      return header;
    };
    // The kill landed between the header's size write and the catalog update.
    catalog.insertVolume(volumeRecord("grown", { uid: "1", format: "qcow2", capacity: 1 * MiB }));
    fs.writeFileSync(pool.volumePath("grown", "qcow2"), qcow2Header(3 * MiB));
    catalog.saveJob(jobRecord("j-grow", { volume: "grown", state: "RUNNING", kind: "RESIZE_VOLUME" }));
    // The kill landed before the header changed: nothing to adopt.
    catalog.insertVolume(volumeRecord("same", { uid: "2", format: "qcow2", capacity: 2 * MiB }));
    fs.writeFileSync(pool.volumePath("same", "qcow2"), qcow2Header(2 * MiB));
    catalog.saveJob(
      jobRecord("j-same", {
        volume: "same",
        state: "RUNNING",
        kind: "RESIZE_VOLUME",
        createTime: new Date(2),
      }),
    );

    const report = await reconcile(catalog, pool, pino({ level: "silent" }));

    expect(report.resizesAdopted).toEqual(["grown"]);
    expect(catalog.getVolume("grown")?.capacity).toBe(3 * MiB);
    expect(catalog.getVolume("same")?.capacity).toBe(2 * MiB);
    catalog.close();
  });
});

describe("reconcile on a pool left full", () => {
  /** The real catalog, failing its writes with NO_SPACE (as SQLITE_FULL maps) while `isFull()` says so. */
  function fullWhile(catalog: SqliteCatalog, isFull: () => boolean): SqliteCatalog {
    const writes = new Set(["insertVolume", "updateVolume", "deleteVolume", "saveJob"]);
    return new Proxy(catalog, {
      get(target, prop, receiver) {
        const value: unknown = Reflect.get(target, prop, receiver);
        if (typeof value !== "function") return value;
        return (...args: unknown[]) => {
          if (writes.has(String(prop)) && isFull())
            throw new EngineError("NO_SPACE", "disk full", { reason: "HOST_ENOSPC" });
          return value.apply(target, args);
        };
      },
    });
  }

  async function leftFull() {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "vdisk-pool-"));
    dirs.push(root);
    const pool = new Pool(root);
    await pool.init();
    const catalog = SqliteCatalog.open(pool.catalogPath);
    catalog.insertVolume(volumeRecord("ready", { uid: "1" }));
    fs.writeFileSync(pool.volumePath("ready", "raw"), "data");
    catalog.insertVolume(volumeRecord("half", { uid: "2", state: "CREATING" }));
    fs.writeFileSync(pool.tempPath("half", "raw"), "partial");
    fs.writeFileSync(path.join(pool.tmpDir, "upload~staging.raw.tmp"), "staged upload");
    catalog.saveJob(jobRecord("j-create", { volume: "half", state: "RUNNING" }));
    return { pool, catalog };
  }

  it("removes the debris before writing the catalog, so the space it held is what the catalog uses", async () => {
    const { pool, catalog } = await leftFull();
    const full = fullWhile(catalog, () => fs.readdirSync(pool.tmpDir).length > 0);
    const report = await reconcile(full, pool, pino({ level: "silent" }));
    expect(report).toMatchObject({
      removedCreating: ["half"],
      failedJobs: ["j-create"],
      removedTempFiles: 2,
    });
    expect(catalog.getJob("j-create")?.state).toBe("FAILED");
    expect(catalog.listVolumes({ limit: 10 }).map((v) => v.name)).toEqual(["ready"]);
    catalog.close();
  });

  it("still lets the server start when nothing frees room; the next start finishes the job", async () => {
    const { pool, catalog } = await leftFull();
    const report = await reconcile(
      fullWhile(catalog, () => true),
      pool,
      pino({ level: "silent" }),
    );
    expect(report).toMatchObject({ removedCreating: [], failedJobs: [], removedTempFiles: 2 });
    expect(fs.readdirSync(pool.tmpDir)).toEqual([]);
    const again = await reconcile(catalog, pool, pino({ level: "silent" }));
    expect(again).toMatchObject({ removedCreating: ["half"], failedJobs: ["j-create"] });
    catalog.close();
  });
});

describe("Pool", () => {
  it("publishes a temp file atomically and refuses to replace an existing file", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "vdisk-pool-"));
    dirs.push(root);
    const pool = new Pool(root);
    await pool.init();
    const t1 = pool.tempPath("v", "qcow2");
    fs.writeFileSync(t1, "one");
    expect(await pool.publish(t1, "v", "qcow2")).toBe(path.join(root, "v.qcow2"));
    expect(fs.existsSync(t1)).toBe(false);
    const t2 = pool.tempPath("v", "qcow2");
    fs.writeFileSync(t2, "two");
    await expect(pool.publish(t2, "v", "qcow2")).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
    expect(fs.readFileSync(path.join(root, "v.qcow2"), "utf8")).toBe("one");
  });

  it("never turns a name into a path", () => {
    const pool = new Pool("/pool");
    expect(() => pool.volumePath("../etc/passwd", "raw")).toThrow(/must not contain/);
    expect(pool.volumePath("disk", "vmdk")).toBe("/pool/disk.vmdk");
  });
});
