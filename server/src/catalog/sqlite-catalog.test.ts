import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { EngineError } from "@vdisk/engine";
import { afterEach, describe, expect, it } from "vitest";
import { SqliteCatalog } from "./sqlite-catalog.js";
import { jobRecord, volumeRecord } from "./test-records.js";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

describe("SqliteCatalog", () => {
  it("creates the file in WAL mode with a versioned schema, and reopens it", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vdisk-cat-"));
    dirs.push(dir);
    const file = path.join(dir, ".vdisk", "catalog.db");
    const a = SqliteCatalog.open(file);
    expect(a.schemaVersion()).toBe(3);
    a.insertVolume(volumeRecord("keep", { labels: { env: "prod" } }));
    a.close();
    expect(fs.existsSync(`${file}-wal`) || fs.existsSync(file)).toBe(true);
    const b = SqliteCatalog.open(file);
    expect(b.schemaVersion()).toBe(3);
    expect(b.getVolume("keep")?.labels).toEqual({ env: "prod" });
    b.close();
  });

  it("does volume CRUD", () => {
    const c = SqliteCatalog.open(":memory:");
    const v = volumeRecord("a", {
      options: { qcow2: { compat: "1.1" } },
      backingVolume: "base",
      requestId: "r1",
    });
    c.insertVolume(v);
    expect(c.getVolume("a")).toEqual(v);
    expect(() => c.insertVolume(volumeRecord("a", { uid: "other" }))).toThrow(EngineError);
    try {
      c.insertVolume(volumeRecord("a", { uid: "other" }));
    } catch (err) {
      expect((err as EngineError).code).toBe("ALREADY_EXISTS");
    }
    const updated = c.updateVolume("a", { state: "ERROR", errorMessage: "fsync failed", labels: { x: "1" } });
    expect(updated).toMatchObject({ state: "ERROR", errorMessage: "fsync failed", labels: { x: "1" } });
    expect(updated.updateTime).toBeGreaterThan(1000);
    expect(c.dependantsOf("base")).toEqual(["a"]);
    expect(() => c.updateVolume("nope", { state: "READY" })).toThrow(/not found/);
    expect(c.deleteVolume("a")).toBe(true);
    expect(c.deleteVolume("a")).toBe(false);
    expect(c.getVolume("a")).toBeUndefined();
    c.close();
  });

  it("remembers the request id of a delete with the record's removal, and only of one that deleted", () => {
    const c = SqliteCatalog.open(":memory:");
    c.insertVolume(volumeRecord("gone"));
    expect(c.deleteVolume("gone", "req-1")).toBe(true);
    expect(c.completedDelete("req-1")).toEqual({ volume: "gone" });
    expect(c.deleteVolume("never-was", "req-2")).toBe(false);
    expect(c.completedDelete("req-2")).toBeUndefined();
    c.insertVolume(volumeRecord("other", { uid: "other" }));
    expect(c.deleteVolume("other")).toBe(true);
    expect(c.completedDelete("")).toBeUndefined();
    c.close();
  });

  it("pages volumes by name and filters by labels", () => {
    const c = SqliteCatalog.open(":memory:");
    for (const n of ["d", "a", "c", "b", "e"]) {
      c.insertVolume(volumeRecord(n, { uid: n, labels: n < "c" ? { tier: "gold", n } : { tier: "silver" } }));
    }
    expect(c.listVolumes({ limit: 2 }).map((v) => v.name)).toEqual(["a", "b"]);
    expect(c.listVolumes({ limit: 2, after: "b" }).map((v) => v.name)).toEqual(["c", "d"]);
    expect(c.listVolumes({ limit: 10, labels: { tier: "gold" } }).map((v) => v.name)).toEqual(["a", "b"]);
    expect(c.listVolumes({ limit: 10, labels: { tier: "gold", n: "b" } }).map((v) => v.name)).toEqual(["b"]);
    expect(c.listVolumes({ limit: 10, labels: { tier: "bronze" } })).toEqual([]);
    c.close();
  });

  it("saves jobs (insert and update), finds them by request id, and lists them", () => {
    const c = SqliteCatalog.open(":memory:");
    c.saveJob(jobRecord("j1", { requestId: "req-1", createTime: new Date(1) }));
    c.saveJob(jobRecord("j2", { createTime: new Date(2), state: "RUNNING" }));
    c.saveJob(jobRecord("j3", { createTime: new Date(3), volume: "w", kind: "CHECK_VOLUME" }));
    expect(() => c.saveJob(jobRecord("j4", { requestId: "req-1" }))).toThrow(/already used/);
    expect(c.findJobByRequestId("req-1")?.id).toBe("j1");
    expect(c.findJobByRequestId("req-x")).toBeUndefined();
    expect(c.latestJob("v", "CREATE_VOLUME")?.id).toBe("j2");
    expect(c.listJobs({ limit: 10 }).map((j) => j.id)).toEqual(["j3", "j2", "j1"]);
    expect(c.listJobs({ limit: 10, states: ["RUNNING"] }).map((j) => j.id)).toEqual(["j2"]);
    expect(c.listJobs({ limit: 10, volume: "w" }).map((j) => j.id)).toEqual(["j3"]);
    expect(c.listJobs({ limit: 10, before: { createTime: 3, id: "j3" } }).map((j) => j.id)).toEqual([
      "j2",
      "j1",
    ]);
    const failed = jobRecord("j2", {
      createTime: new Date(2),
      state: "FAILED",
      startTime: new Date(5),
      endTime: new Date(9),
      progress: { doneBytes: 50, totalBytes: 100, bytesPerSecond: 10, etaSeconds: 0, phase: "writing" },
      error: { code: "NO_SPACE", message: "disk full", reason: "HOST_ENOSPC", metadata: { volume: "v" } },
    });
    c.saveJob(failed);
    expect(c.getJob("j2")).toEqual(failed);
    expect(c.getJob("j1")).toEqual(jobRecord("j1", { requestId: "req-1", createTime: new Date(1) }));
    c.close();
  });

  it("keeps a succeeded job's result as plain data; results that are not plain data or too large are dropped", () => {
    const c = SqliteCatalog.open(":memory:");
    const report = {
      corruptions: 0,
      leaks: 2,
      corruptionsFixed: 0,
      leaksFixed: 2,
      checkErrors: 0,
      messages: ["x"],
    };
    c.saveJob(jobRecord("check", { kind: "CHECK_VOLUME", state: "SUCCEEDED", result: report }));
    expect(c.getJob("check")?.result).toEqual(report);
    c.saveJob(jobRecord("big", { state: "SUCCEEDED", result: { size: 1n } }));
    expect(c.getJob("big")?.result).toBeUndefined();
    c.saveJob(jobRecord("long", { state: "SUCCEEDED", result: { messages: ["m".repeat(300 * 1024)] } }));
    expect(c.getJob("long")?.result).toBeUndefined();
    c.close();
  });

  it("rolls back a failed transaction", () => {
    const c = SqliteCatalog.open(":memory:");
    expect(() =>
      c.transaction(() => {
        c.insertVolume(volumeRecord("t"));
        throw new Error("boom");
      }),
    ).toThrow("boom");
    expect(c.getVolume("t")).toBeUndefined();
    c.close();
  });
  it("reports a transaction's own error when SQLite already rolled it back (no 'cannot rollback')", () => {
    const c = SqliteCatalog.open(":memory:");
    const db = (c as unknown as { db: { exec(sql: string): void } }).db;
    // What SQLite does by itself after SQLITE_FULL at COMMIT: the transaction is gone when the error surfaces.
    const full = Object.assign(new Error("database or disk is full"), { code: "SQLITE_FULL" });
    let thrown: unknown;
    try {
      c.transaction(() => {
        c.insertVolume(volumeRecord("lost"));
        db.exec("ROLLBACK");
        throw full;
      });
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(EngineError);
    expect((thrown as EngineError).code).toBe("NO_SPACE");
    expect(c.getVolume("lost")).toBeUndefined();
    c.transaction(() => c.insertVolume(volumeRecord("next")));
    expect(c.getVolume("next")).toBeDefined();
  });

  it("maps a catalog that cannot grow inside a transaction to NO_SPACE and stays usable", () => {
    const c = SqliteCatalog.open(":memory:");
    const db = (c as unknown as { db: { pragma(sql: string): unknown } }).db;
    const pages = db.pragma("page_count") as { page_count: number }[];
    db.pragma(`max_page_count = ${pages[0]?.page_count ?? 1}`);
    let thrown: unknown;
    try {
      c.transaction(() => {
        for (let i = 0; i < 200; i++)
          c.insertVolume(volumeRecord(`v${i}`, { labels: { pad: "x".repeat(500) } }));
      });
    } catch (err) {
      thrown = err;
    }
    expect((thrown as EngineError).code).toBe("NO_SPACE");
    expect(c.getVolume("v0")).toBeUndefined();
    db.pragma("max_page_count = 1073741823");
    c.transaction(() => c.insertVolume(volumeRecord("after")));
    expect(c.getVolume("after")).toBeDefined();
  });
});
