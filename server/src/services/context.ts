import { EngineError } from "@vdisk/engine";
import type { Catalog, VolumeRecord } from "../catalog/catalog.js";
import type { JobRunner } from "../jobs/job-runner.js";
import type { Logger } from "../log.js";
import { validateVolumeName } from "../pool/names.js";
import type { Pool } from "../pool/pool.js";
import type { AdapterEnv } from "../rpc/adapt.js";
import type { EngineDeps, ImageRegistry } from "../volumes/image-registry.js";

/** Everything the services share; built once by startServer. */
export interface ServiceContext {
  catalog: Catalog;
  pool: Pool;
  images: ImageRegistry;
  jobs: JobRunner;
  engine: EngineDeps;
  leases: VolumeLeases;
  adapter: AdapterEnv;
  log: Logger;
  maxCapacity: number;
}

/**
 * Counts calls currently using a volume's open image (data streams, zeroing, maps), so a delete can
 * refuse instead of closing the image under a running stream.
 */
export class VolumeLeases {
  private readonly counts = new Map<string, number>();

  acquire(uid: string): () => void {
    this.counts.set(uid, (this.counts.get(uid) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const n = (this.counts.get(uid) ?? 1) - 1;
      if (n <= 0) this.counts.delete(uid);
      else this.counts.set(uid, n);
    };
  }

  inUse(uid: string): boolean {
    return this.counts.has(uid);
  }
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
