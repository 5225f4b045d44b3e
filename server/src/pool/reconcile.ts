import fs from "node:fs/promises";
import path from "node:path";
import { EngineError } from "@vdisk/engine";
import type { Catalog } from "../catalog/catalog.js";
import type { Logger } from "../log.js";
import type { Pool } from "./pool.js";

export interface ReconcileReport {
  removedCreating: string[];
  finishedDeleting: string[];
  failedJobs: string[];
  removedTempFiles: number;
  unknownFiles: string[];
  /** Raw volumes whose interrupted resize left file size and recorded capacity apart: the file was cut back. */
  resizesRolledBack: string[];
  /** qcow2 volumes whose interrupted resize had already written the new size into the header: it is recorded. */
  resizesAdopted: string[];
}

/**
 * Brings catalog and pool back in agreement after a start (possibly after a crash):
 * - a volume still CREATING was never published: its files and record go, its job becomes FAILED;
 * - a volume still DELETING had its deletion accepted: it is finished;
 * - any job still QUEUED/RUNNING lost its runner with the old process and becomes FAILED;
 * - everything under the temp directory is debris from interrupted work and is removed;
 * - files the catalog does not know are reported, never adopted or deleted (they may be an operator's);
 * - a raw volume whose resize was interrupted gets its recorded capacity back: a longer file is cut back
 *   (the job held the volume exclusively, so the grown tail holds no guest data); a shorter one (an
 *   interrupted shrink that already cut) is recorded at its real size;
 * - a qcow2 volume whose resize was interrupted gets the size its header holds recorded: the header write is
 *   the resize's single switch (a grow zeroes the new area first; a shrink has freed the tail), so the
 *   image already is that size and the catalog must not claim another.
 */
export async function reconcile(catalog: Catalog, pool: Pool, log: Logger): Promise<ReconcileReport> {
  const report: ReconcileReport = {
    removedCreating: [],
    finishedDeleting: [],
    failedJobs: [],
    removedTempFiles: 0,
    unknownFiles: [],
    resizesRolledBack: [],
    resizesAdopted: [],
  };
  const now = new Date();

  const interrupted = catalog.listJobs({ states: ["QUEUED", "RUNNING"], limit: 1_000_000 });

  // Debris goes first: on a pool that filled up before the restart, removing it is what gives the
  // catalog room for the writes below. Everything under the temp directory is debris at start (half-made
  // volumes, import staging), so it goes before any catalog write.
  for (const temp of await pool.listTemp()) {
    await pool.removeFile(temp);
    report.removedTempFiles++;
  }
  for (const volume of allVolumes(catalog)) {
    if (volume.state !== "CREATING" && volume.state !== "DELETING") continue;
    // Whether or not the rename happened before the crash, a file under this name was made by this attempt.
    await pool.removeFile(pool.volumePath(volume.name, volume.format));
    if (!ifRoom(log, { volume: volume.name }, () => catalog.deleteVolume(volume.name))) continue;
    (volume.state === "CREATING" ? report.removedCreating : report.finishedDeleting).push(volume.name);
  }

  // BUSY maps to ABORTED: the work was not done and retrying the request is the right answer.
  for (const job of interrupted) {
    const message =
      job.kind === "CREATE_VOLUME"
        ? "server restarted during creation"
        : "server restarted while the job was running";
    const recorded = ifRoom(log, { job: job.id }, () =>
      catalog.saveJob({
        ...job,
        state: "FAILED",
        endTime: now,
        progress: { ...job.progress, bytesPerSecond: 0, etaSeconds: 0, phase: "failed" },
        error: { code: "BUSY", message, reason: "SERVER_RESTARTED", metadata: {} },
      }),
    );
    if (!recorded) continue;
    report.failedJobs.push(job.id);
  }

  for (const job of interrupted) {
    if (job.kind !== "RESIZE_VOLUME") continue;
    const volume = catalog.getVolume(job.volume);
    if (volume === undefined || volume.state !== "READY") continue;
    const file = pool.volumePath(volume.name, volume.format);
    if (volume.format === "qcow2") {
      const size = await qcow2VirtualSize(file);
      if (size === undefined || size === volume.capacity) continue;
      if (!ifRoom(log, { volume: volume.name }, () => catalog.updateVolume(volume.name, { capacity: size })))
        continue;
      report.resizesAdopted.push(volume.name);
      continue;
    }
    if (volume.format !== "raw") continue;
    const size = await fs.stat(file).then(
      (st) => st.size,
      () => undefined,
    );
    if (size === undefined || size === volume.capacity) continue;
    if (size > volume.capacity) await pool.truncateFile(file, volume.capacity);
    else catalog.updateVolume(volume.name, { capacity: size });
    report.resizesRolledBack.push(volume.name);
  }

  const known = new Set(allVolumes(catalog).map((v) => pool.fileName(v.name, v.format)));
  for (const file of await pool.listVolumeFiles()) {
    if (!known.has(file)) report.unknownFiles.push(file);
  }

  for (const name of report.removedCreating)
    log.warn({ volume: name }, "removed a volume left CREATING by an earlier run");
  for (const name of report.resizesRolledBack)
    log.warn({ volume: name }, "restored the capacity of a volume whose resize was interrupted");
  for (const name of report.resizesAdopted)
    log.warn({ volume: name }, "recorded the size a qcow2 volume's interrupted resize had already written");
  for (const name of report.finishedDeleting)
    log.info({ volume: name }, "finished deleting a volume left DELETING by an earlier run");
  for (const id of report.failedJobs) log.warn({ job: id }, "marked an interrupted job FAILED");
  if (report.removedTempFiles > 0) log.info({ count: report.removedTempFiles }, "removed temporary files");
  for (const file of report.unknownFiles) {
    log.warn(
      { file: path.basename(file) },
      "file in the pool has no catalog record; leaving it alone (not adopted, not deleted)",
    );
  }
  return report;
}

/**
 * Runs a catalog write; on a full disk logs and returns false instead of throwing. A full pool must not
 * keep the server from starting (the operator needs it to delete volumes); what could not be recorded is
 * still stale in the catalog, and the next start with room finishes it.
 */
function ifRoom(log: Logger, subject: Record<string, string>, write: () => unknown): boolean {
  try {
    write();
    return true;
  } catch (err) {
    if (EngineError.from(err).code !== "NO_SPACE") throw err;
    log.error(subject, "pool full: reconcile could not update the catalog; the next start will");
    return false;
  }
}

/**
 * The virtual size in a qcow2 header (big-endian u64 at byte 24), or undefined when the file is missing or
 * does not look like qcow2 — then the image open reports the problem, not reconcile.
 */
async function qcow2VirtualSize(file: string): Promise<number | undefined> {
  const handle = await fs.open(file, "r").catch(() => undefined);
  if (handle === undefined) return undefined;
  try {
    const header = Buffer.alloc(32);
    const { bytesRead } = await handle.read(header, 0, 32, 0);
    if (bytesRead < 32 || header.readUInt32BE(0) !== 0x514649fb) return undefined;
    const size = header.readBigUInt64BE(24);
    return size <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(size) : undefined;
  } finally {
    await handle.close();
  }
}

function* allVolumesGen(catalog: Catalog): Generator<ReturnType<Catalog["listVolumes"]>[number]> {
  let after: string | undefined;
  for (;;) {
    const page = catalog.listVolumes({ ...(after === undefined ? {} : { after }), limit: 500 });
    yield* page;
    if (page.length < 500) return;
    after = page[page.length - 1]?.name;
  }
}

function allVolumes(catalog: Catalog) {
  return [...allVolumesGen(catalog)];
}
