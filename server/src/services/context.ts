import { randomUUID } from "node:crypto";
import { EngineError } from "@vdisk/engine";
import type { Catalog, VolumeRecord } from "../catalog/catalog.js";
import type { JobRunner } from "../jobs/job-runner.js";
import type { VolumeLocks } from "../jobs/volume-locks.js";
import type { Logger } from "../log.js";
import { validateVolumeName } from "../pool/names.js";
import type { Pool } from "../pool/pool.js";
import type { AdapterEnv } from "../rpc/adapt.js";
import type { EngineDeps, ImageRegistry } from "../volumes/image-registry.js";
import type { ServerHealth } from "./health.js";

/** Everything the services share; built once by startServer. */
export interface ServiceContext {
  catalog: Catalog;
  pool: Pool;
  images: ImageRegistry;
  jobs: JobRunner;
  engine: EngineDeps;
  locks: VolumeLocks;
  admission: StreamAdmission;
  adapter: AdapterEnv;
  log: Logger;
  maxCapacity: number;
  /** Told when a volume's state changes, for its `vdisk.v1.Volume/<name>` health status. */
  health: Pick<ServerHealth, "volumeChanged">;
}

export function requireVolume(catalog: Catalog, name: string, field = "name"): VolumeRecord {
  validateVolumeName(name, field);
  const volume = catalog.getVolume(name);
  if (volume === undefined) {
    throw new EngineError("NOT_FOUND", `volume "${name}" not found`, {
      reason: "VOLUME_NOT_FOUND",
      metadata: { volume: name },
    });
  }
  return volume;
}

/** A volume that can serve I/O: it exists and is READY. */
export function requireReadyVolume(catalog: Catalog, name: string, field = "name"): VolumeRecord {
  const volume = requireVolume(catalog, name, field);
  if (volume.state !== "READY") {
    const why =
      volume.state === "CREATING"
        ? "is still being created"
        : volume.state === "DELETING"
          ? "is being deleted"
          : `is in ERROR state${volume.errorMessage === undefined ? "" : `: ${volume.errorMessage}`}`;
    throw new EngineError("FAILED_PRECONDITION", `volume "${name}" ${why}`, {
      reason: `VOLUME_${volume.state}`,
      metadata: { volume: name },
    });
  }
  return volume;
}

/**
 * After a failed operation on a volume:
 *
 * - if the failure makes the volume untrustworthy (an fsync failed, or corruption was detected), the
 *   volume goes to ERROR and stays there until an operator acts (DESIGN §7 rules 6 and 7), and its image
 *   is closed so nothing keeps writing through it;
 * - after any other host I/O error (EIO, ENOSPC on a write), the volume stays READY but its open image is
 *   dropped: a driver may stop writing through a handle whose write failed (qcow2 does: its caches may be
 *   ahead of the disk), and what is on disk holds at most leaks, so the next call reopens the image from
 *   the disk and serves again once the cause is gone (reliability.md T4/T5, fault-matrix.test.ts).
 */
export async function markVolumeIfBroken(
  ctx: ServiceContext,
  volume: VolumeRecord,
  err: unknown,
): Promise<void> {
  const e = EngineError.from(err);
  if (e.code !== "FSYNC_FAILED" && e.code !== "CORRUPT") {
    if (isHostWriteFailure(e)) {
      ctx.log.warn(
        { volume: volume.name, code: e.code, reason: e.reason },
        "host I/O error; reopening the image and its overlays",
      );
      await closeWithOverlays(ctx, volume);
    }
    return;
  }
  const message =
    e.code === "FSYNC_FAILED"
      ? "a flush to disk failed; data written since the last successful flush may be lost"
      : e.message;
  ctx.log.error({ volume: volume.name, code: e.code, reason: e.reason, err }, "volume put in ERROR state");
  try {
    ctx.catalog.updateVolume(volume.name, { state: "ERROR", errorMessage: message });
  } catch (updateErr) {
    ctx.log.error({ err: updateErr, volume: volume.name }, "could not record the ERROR state");
  }
  ctx.health.volumeChanged(volume.name);
  await ctx.images.close(volume.uid).catch(() => {});
}

/** An I/O error of the host file, or a driver refusing to write after one (not a refused request). */
function isHostWriteFailure(e: EngineError): boolean {
  return (
    (e.code === "IO" || e.code === "NO_SPACE") &&
    (e.reason.startsWith("HOST_") || e.reason === "QCOW2_WRITE_FAILED")
  );
}

/**
 * Closes a volume's image and, first, the images of every overlay reading through it (they hold it as
 * their backing): the next call reopens the whole chain from what is on disk.
 */
async function closeWithOverlays(ctx: ServiceContext, volume: VolumeRecord, depth = 0): Promise<void> {
  if (depth <= 64) {
    for (const name of ctx.catalog.dependantsOf(volume.name)) {
      const overlay = ctx.catalog.getVolume(name);
      if (overlay !== undefined) await closeWithOverlays(ctx, overlay, depth + 1);
    }
  }
  await ctx.images.close(volume.uid).catch(() => {});
}

/** Data streams and range calls allowed at once, per volume and in total (DESIGN §4 admission). */
export const MAX_STREAMS_PER_VOLUME = 16;
export const MAX_STREAMS_TOTAL = 256;

/**
 * Counts calls using volumes' images. Past the limits a call fails at once with RESOURCE_EXHAUSTED
 * (reason TOO_MANY_STREAMS): the client backs off, instead of the server queueing unbounded work.
 */
export class StreamAdmission {
  private readonly perVolume = new Map<string, number>();
  private total = 0;

  constructor(
    private readonly maxPerVolume = MAX_STREAMS_PER_VOLUME,
    private readonly maxTotal = MAX_STREAMS_TOTAL,
  ) {}

  admit(volume: string): () => void {
    const current = this.perVolume.get(volume) ?? 0;
    if (current >= this.maxPerVolume || this.total >= this.maxTotal) {
      throw new EngineError(
        "NO_SPACE",
        current >= this.maxPerVolume
          ? `too many concurrent streams on volume "${volume}" (limit ${this.maxPerVolume})`
          : `too many concurrent streams (limit ${this.maxTotal})`,
        { reason: "TOO_MANY_STREAMS", metadata: { volume } },
      );
    }
    this.perVolume.set(volume, current + 1);
    this.total++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.total--;
      const n = (this.perVolume.get(volume) ?? 1) - 1;
      if (n <= 0) this.perVolume.delete(volume);
      else this.perVolume.set(volume, n);
    };
  }
}

/** Takes what a data call needs on a volume: admission, then a shared lock (refused while a job holds it). */
export function useVolume(ctx: ServiceContext, volume: VolumeRecord): () => void {
  const releaseAdmission = ctx.admission.admit(volume.name);
  try {
    const releaseLock = ctx.locks.acquire(volume.name, "shared", randomUUID());
    return () => {
      releaseLock();
      releaseAdmission();
    };
  } catch (err) {
    releaseAdmission();
    throw err;
  }
}
