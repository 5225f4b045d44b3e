import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { SqliteCatalog } from "../catalog/sqlite-catalog.js";
import { volumeRecord } from "../catalog/test-records.js";
import { type JobContext, JobRunner } from "../jobs/job-runner.js";
import { VolumeLocks } from "../jobs/volume-locks.js";
import { Pool } from "./pool.js";
import { reconcile } from "./reconcile.js";

/**
 * A creation killed in each state the runner persists, without a clean shutdown: the runner is simply
 * abandoned mid-job and the catalog reopened from its file, as a restart after kill -9 sees it. What the
 * runner stores is the real thing (JobRunner over SqliteCatalog), so a change to what gets persisted
 * when is checked against reconcile here.
 */
const dirs: string[] = [];
const catalogs: SqliteCatalog[] = [];
afterEach(() => {
  for (const c of catalogs.splice(0)) c.close();
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

type Stage = "queued" | "running" | "published" | "committed";

/** Starts a creation of "v" the way the volume service does and leaves it at `stage`; returns the job id. */
async function killedAt(stage: Stage): Promise<{ pool: Pool; jobId: string }> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "vdisk-kill-"));
  dirs.push(root);
  const pool = new Pool(root);
  await pool.init();
  const catalog = SqliteCatalog.open(pool.catalogPath);
  catalogs.push(catalog);
  const runner = new JobRunner({ store: catalog, locks: new VolumeLocks(), maxRunning: 1 });
  const never = new Promise<void>(() => {});
  if (stage === "queued") {
    // Another job holds the only slot, so the creation stays QUEUED.
    runner.submit({ kind: "CHECK_VOLUME", volume: "other", locks: [], run: () => never });
  }
  let reached!: () => void;
  const atStage = new Promise<void>((resolve) => {
    reached = resolve;
  });
  const { job } = runner.submit({
    kind: "CREATE_VOLUME",
    volume: "v",
    locks: [{ volume: "v", mode: "exclusive" }],
    totalBytes: 100,
    recordWith: () => catalog.insertVolume(volumeRecord("v", { state: "CREATING" })),
    run: async (ctx: JobContext) => {
      const temp = pool.tempPath("v", "raw");
      fs.writeFileSync(temp, Buffer.alloc(4096));
      ctx.progress(50, 100);
      if (stage === "running") {
        reached();
        return never;
      }
      await pool.publish(temp, "v", "raw");
      if (stage === "published") {
        reached();
        return never;
      }
      ctx.commitSuccess(() => catalog.updateVolume("v", { state: "READY" }));
      reached();
      return never;
    },
  });
  if (stage === "queued") reached();
  await atStage;
  return { pool, jobId: job.id };
}

async function restart(pool: Pool) {
  const catalog = SqliteCatalog.open(pool.catalogPath);
  catalogs.push(catalog);
  const report = await reconcile(catalog, pool, pino({ level: "silent" }));
  return { catalog, report };
}

describe("a creation killed in each persisted state", () => {
  for (const stage of ["queued", "running", "published"] as const) {
    it(`${stage}: the job is failed as interrupted and the volume leaves nothing behind`, async () => {
      const { pool, jobId } = await killedAt(stage);
      const { catalog, report } = await restart(pool);
      expect(report.removedCreating).toEqual(["v"]);
      expect(report.failedJobs).toContain(jobId);
      expect(catalog.getJob(jobId)).toMatchObject({
        state: "FAILED",
        error: { code: "BUSY", reason: "SERVER_RESTARTED" },
      });
      expect(catalog.getVolume("v")).toBeUndefined();
      expect(fs.existsSync(pool.volumePath("v", "raw"))).toBe(false);
      expect(await pool.listTemp()).toEqual([]);
    });
  }

  it("committed: the volume is READY and the job SUCCEEDED, and reconcile leaves both alone", async () => {
    const { pool, jobId } = await killedAt("committed");
    const { catalog, report } = await restart(pool);
    expect(report.removedCreating).toEqual([]);
    expect(report.failedJobs).toEqual([]);
    expect(catalog.getJob(jobId)).toMatchObject({
      state: "SUCCEEDED",
      progress: { doneBytes: 100, totalBytes: 100 },
    });
    expect(catalog.getVolume("v")?.state).toBe("READY");
    expect(fs.existsSync(pool.volumePath("v", "raw"))).toBe(true);
  });

  it("a job row and the record it needs are stored together or not at all", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "vdisk-kill-"));
    dirs.push(root);
    const pool = new Pool(root);
    await pool.init();
    const catalog = SqliteCatalog.open(pool.catalogPath);
    catalogs.push(catalog);
    catalog.insertVolume(volumeRecord("v"));
    const runner = new JobRunner({ store: catalog, locks: new VolumeLocks() });
    expect(() =>
      runner.submit({
        kind: "CREATE_VOLUME",
        volume: "v",
        locks: [],
        recordWith: () => catalog.insertVolume(volumeRecord("v", { uid: "other" })),
        run: async () => {},
      }),
    ).toThrowError(expect.objectContaining({ code: "ALREADY_EXISTS" }));
    expect(catalog.listJobs({ limit: 10 })).toEqual([]);
    expect(runner.liveJobs()).toEqual([]);
  });
});
