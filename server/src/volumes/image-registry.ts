import type { BlockDriver, BlockImage, FormatName, HostFile } from "@vdisk/engine";
import { EngineError } from "@vdisk/engine";
import type { Catalog, VolumeRecord } from "../catalog/catalog.js";
import type { Pool } from "../pool/pool.js";

/** The engine pieces the server needs to open and create images, supplied by startServer (tests may wrap them). */
export interface EngineDeps {
  openHostFile(path: string, opts: { readOnly: boolean; create?: "new" | "truncate" }): Promise<HostFile>;
  /** The driver of a stored format; UNSUPPORTED if this build has none. */
  driverFor(format: FormatName): BlockDriver;
}

/**
 * One open image per volume, shared by every call (several opens of one file would each cache metadata
 * and take image locks against each other). Keyed by uid, so a volume deleted and re-created under the
 * same name is never served from the old file. Backing volumes are opened through the registry too.
 */
export class ImageRegistry {
  private readonly open = new Map<string, Promise<BlockImage>>();

  constructor(
    private readonly catalog: Catalog,
    private readonly pool: Pool,
    private readonly deps: EngineDeps,
  ) {}

  async get(volume: VolumeRecord, depth = 0): Promise<BlockImage> {
    const existing = this.open.get(volume.uid);
    if (existing !== undefined) return existing;
    if (depth > 64)
      throw new EngineError("FAILED_PRECONDITION", "backing chain is too deep", { reason: "CHAIN_TOO_DEEP" });
    const opening = this.openImage(volume, depth);
    this.open.set(volume.uid, opening);
    opening.catch(() => this.open.delete(volume.uid));
    return opening;
  }

  private async openImage(volume: VolumeRecord, depth: number): Promise<BlockImage> {
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
      return await driver.open(file, { readOnly: false, ...(backing === undefined ? {} : { backing }) });
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
    const image = await opening.catch(() => undefined);
    await image?.close();
  }

  /** Closes every open image, overlays before the images they read through. */
  async closeAll(): Promise<void> {
    const images = (await Promise.all([...this.open.values()].map((p) => p.catch(() => undefined)))).filter(
      (i) => i !== undefined,
    );
    this.open.clear();
    const backings = new Set(images.map((i) => i.backing).filter((b) => b !== undefined));
    const ordered = [...images.filter((i) => !backings.has(i)), ...images.filter((i) => backings.has(i))];
    for (const image of ordered) await image.close();
  }
}
