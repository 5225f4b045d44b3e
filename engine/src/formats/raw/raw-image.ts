import type { BackingLink, BlockImage, TruncateOptions } from "../../block-image.js";
import { EngineError } from "../../errors.js";
import type { HostFile } from "../../host/host-file.js";
import type { CheckResult, FormatDetails, IoOptions, LayerStatus, Limits, ZeroOptions } from "../../types.js";
import { preallocate } from "./preallocate.js";

export const RAW_LIMITS: Readonly<Limits> = Object.freeze({
  requestAlignment: 1,
  maxTransfer: 32 * 1024 * 1024,
  zeroAlignment: 4096,
  discardAlignment: 4096,
});

/** QEMU counts image sizes in 512-byte sectors: a raw file's tail past EOF up to the next sector reads as zeros. */
export const RAW_SECTOR = 512;

export function roundUpToSector(bytes: number): number {
  return Math.ceil(bytes / RAW_SECTOR) * RAW_SECTOR;
}

function isUnsupported(error: unknown): boolean {
  return EngineError.from(error).code === "UNSUPPORTED";
}

/**
 * A raw image: guest offset = host offset, no metadata, no backing. Allocation comes straight from the
 * file system (SEEK_DATA/SEEK_HOLE), zeroing from fallocate modes.
 */
export class RawImage implements BlockImage {
  readonly format = "raw" as const;
  readonly readOnly: boolean;
  readonly limits: Limits = RAW_LIMITS;
  readonly backing: BlockImage | undefined = undefined;
  private size: number;
  private readonly file: HostFile;

  /** `fileSize` is the host file's length; the virtual size is that rounded up to a sector, as in QEMU. */
  constructor(file: HostFile, fileSize: number, readOnly: boolean) {
    this.file = file;
    this.size = roundUpToSector(fileSize);
    this.readOnly = readOnly;
  }

  get virtualSize(): number {
    return this.size;
  }

  async read(offset: number, into: Uint8Array, opts?: IoOptions): Promise<void> {
    await this.file.readFull(offset, into, opts);
  }

  async write(offset: number, data: Uint8Array, opts?: IoOptions): Promise<void> {
    await this.file.write(offset, data, opts);
  }

  /**
   * mayUnmap: punch a hole (frees space, reads as zeros). Otherwise keep the range allocated: ZERO_RANGE,
   * or punch + re-allocate where only those exist (QEMU file-posix does the same). Anything else is
   * UNSUPPORTED, and the core writes zero buffers.
   */
  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    const caps = this.file.capabilities;
    if (opts?.mayUnmap === true && caps.punchHole) {
      try {
        await this.file.punchHole(offset, length);
        return;
      } catch (error) {
        if (!isUnsupported(error)) throw error;
      }
    }
    if (caps.zeroRange) {
      await this.file.zeroRange(offset, length, true);
      return;
    }
    if (caps.punchHole && caps.allocate) {
      await this.file.punchHole(offset, length);
      await this.file.allocate(offset, length, true);
      return;
    }
    throw new EngineError("UNSUPPORTED", "the host file system cannot zero a range without writing", {
      reason: "HOST_NO_ZERO_RANGE",
    });
  }

  /** Advisory: without hole punching the data simply stays (the contract allows doing nothing). */
  async discard(offset: number, length: number): Promise<void> {
    if (!this.file.capabilities.punchHole) return;
    try {
      await this.file.punchHole(offset, length);
    } catch (error) {
      if (!isUnsupported(error)) throw error;
    }
  }

  /**
   * Raw always determines its content (allocated), and reports host offset = guest offset for data and
   * holes alike, as QEMU's file-posix does. Without SEEK_DATA everything is data.
   */
  async blockStatus(offset: number, length: number): Promise<LayerStatus> {
    if (!this.file.capabilities.seekData) {
      return { length, allocated: true, data: true, zero: false, hostOffset: offset };
    }
    const dataStart = await this.file.seekData(offset);
    if (dataStart === null) {
      return { length: this.size - offset, allocated: true, data: false, zero: true, hostOffset: offset };
    }
    if (dataStart > offset) {
      return { length: dataStart - offset, allocated: true, data: false, zero: true, hostOffset: offset };
    }
    const holeStart = await this.file.seekHole(offset);
    if (holeStart <= offset) {
      throw new EngineError("IO", `SEEK_HOLE at ${offset} returned ${holeStart} inside data`, {
        reason: "HOST_SEEK_INCONSISTENT",
      });
    }
    return { length: holeStart - offset, allocated: true, data: true, zero: false, hostOffset: offset };
  }

  async truncate(newSize: number, opts: TruncateOptions): Promise<void> {
    const oldSize = this.size;
    if (newSize < oldSize && opts.prealloc !== "off") {
      throw new EngineError("UNSUPPORTED", "shrinking requires preallocation off", {
        reason: "SHRINK_WITH_PREALLOCATION",
      });
    }
    if (newSize > oldSize) {
      // From the file's real end: a sub-sector tail past EOF belongs to the grown area too.
      const fileEnd = Math.min(oldSize, await this.file.size());
      await preallocate(this.file, fileEnd, newSize, opts.prealloc, {
        signal: opts.signal,
        onProgress: opts.onProgress,
      });
    }
    await this.file.truncate(newSize);
    this.size = roundUpToSector(newSize);
  }

  async flush(): Promise<void> {
    await this.file.flush();
  }

  async check(): Promise<CheckResult> {
    return { corruptions: 0, leaks: 0, corruptionsFixed: 0, leaksFixed: 0, checkErrors: 0, messages: [] };
  }

  async setBackingLink(_link: BackingLink | undefined, _backing: BlockImage | undefined): Promise<void> {
    throw new EngineError("UNSUPPORTED", "raw images cannot have a backing file", {
      reason: "RAW_NO_BACKING",
    });
  }

  details(): FormatDetails {
    return {};
  }

  async physicalBytes(): Promise<number> {
    return this.file.allocatedBytes();
  }

  async close(): Promise<void> {
    try {
      if (!this.readOnly) await this.file.flush();
    } finally {
      await this.file.close();
    }
  }
}
