import type { BlockDriver, BlockImage, FormatName, HostFile, LockMode } from "@vdisk/engine";
import { EngineError } from "@vdisk/engine";
import type { Catalog, VolumeRecord } from "../catalog/catalog.js";
import type { Pool } from "../pool/pool.js";

/** The engine pieces the server needs to open and create images, supplied by startServer (tests may wrap them). */
export interface EngineDeps {
  openHostFile(
    path: string,
    opts: {
      readOnly: boolean;
      create?: "new" | "truncate";
      directWrites?: boolean;
      writeBehindBytes?: number;
    },
  ): Promise<HostFile>;
  /** The driver of a stored format; UNSUPPORTED if this build has none. */
  driverFor(format: FormatName): BlockDriver;
}

interface OpenImage {
  image: BlockImage;
  file: HostFile;
  lock: LockMode;
}

/**
 * One open image per volume, shared by every call (several opens of one file would each cache metadata
 * and take image locks against each other). Keyed by uid, so a volume deleted and re-created under the
 * same name is never served from the old file. Backing volumes are opened through the registry too.
 *
 * Every file is image-locked the way QEMU locks it (reliability.md §1.7) before the driver reads a byte,
 * and stays locked while open: a volume served directly is locked "exclusive" (a VM or qemu-io can't
 * open it for writing, nor can another vdisk server on the same pool); a volume only read as a backing
 * layer is locked "shared" and upgraded when it is later served directly. A lock conflict is not cached:
 * the next call tries again.
 */
export class ImageRegistry {
  private readonly open = new Map<string, Promise<OpenImage>>();

  constructor(
    private readonly catalog: Catalog,
    private readonly pool: Pool,
    private readonly deps: EngineDeps,
  ) {}

  async get(volume: VolumeRecord, depth = 0): Promise<BlockImage> {
    const lock: LockMode = depth === 0 ? "exclusive" : "shared";
    const existing = this.open.get(volume.uid);
    if (existing !== undefined) {
      const entry = await existing;
      if (lock === "exclusive" && entry.lock === "shared") {
        // Throws IMAGE_LOCKED (keeping the shared lock) while another process reads or writes the file.
        await entry.file.lockImage("exclusive");
        entry.lock = "exclusive";
      }
      return entry.image;
    }
    if (depth > 64)
      throw new EngineError("FAILED_PRECONDITION", "backing chain is too deep", { reason: "CHAIN_TOO_DEEP" });
    const opening = this.openImage(volume, depth, lock);
    this.open.set(volume.uid, opening);
    opening.catch(() => {
      if (this.open.get(volume.uid) === opening) this.open.delete(volume.uid);
    });
    return (await opening).image;
  }

  private async openImage(volume: VolumeRecord, depth: number, lock: LockMode): Promise<OpenImage> {
    const driver = this.deps.driverFor(volume.format);
    let backing: BlockImage | undefined;
    if (volume.backingVolume !== undefined) {
      const base = this.catalog.getVolume(volume.backingVolume);
      if (base === undefined) {
        throw new EngineError(
          "FAILED_PRECONDITION",
          `backing volume "${volume.backingVolume}" of "${volume.name}" is missing`,
          {
            reason: "BACKING_MISSING",
          },
        );
      }
      backing = await this.get(base, depth + 1);
    }
    const file = await this.deps.openHostFile(this.pool.volumePath(volume.name, volume.format), {
      readOnly: false,
    });
    try {
      await file.lockImage(lock);
      const image = await driver.open(file, {
        readOnly: false,
        ...(backing === undefined ? {} : { backing }),
      });
      return { image, file, lock };
    } catch (err) {
      await file.close().catch(() => {});
      throw err;
    }
  }

  /** Flushes and closes the volume's image if it is open. */
  async close(uid: string): Promise<void> {
    const opening = this.open.get(uid);
    if (opening === undefined) return;
    this.open.delete(uid);
    const entry = await opening.catch(() => undefined);
    // Closing the file descriptor drops its OFD locks too; unlocking first makes the release explicit.
    await entry?.file.unlockImage().catch(() => {});
    await entry?.image.close();
  }

  /** Closes every open image, overlays before the images they read through. */
  async closeAll(): Promise<void> {
    const images = (await Promise.all([...this.open.values()].map((p) => p.catch(() => undefined))))
      .filter((e) => e !== undefined)
      .map((e) => e.image);
    this.open.clear();
    const backings = new Set(images.map((i) => i.backing).filter((b) => b !== undefined));
    const ordered = [...images.filter((i) => !backings.has(i)), ...images.filter((i) => backings.has(i))];
    for (const image of ordered) await image.close();
  }
}
