import type { BlockDriver, BlockImage, CreateOptions, OpenOptions } from "../../block-image.js";
import { EngineError } from "../../errors.js";
import type { HostFile } from "../../host/host-file.js";
import { preallocate } from "./preallocate.js";
import { RawImage, roundUpToSector } from "./raw-image.js";

/** Any byte sequence is a valid raw image, so raw only wins when no other format recognises the head. */
const RAW_PROBE_CONFIDENCE = 1;

function assertSize(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new EngineError(
      "INVALID_ARGUMENT",
      `${what} must be a non-negative integer below 2^53, got ${value}`,
      {
        reason: "BAD_SIZE",
      },
    );
  }
}

async function create(file: HostFile, opts: CreateOptions): Promise<void> {
  assertSize(opts.size, "size");
  if (opts.backing !== undefined) {
    throw new EngineError("INVALID_ARGUMENT", "raw images cannot have a backing file", {
      reason: "RAW_NO_BACKING",
    });
  }
  if (opts.prealloc === "metadata") {
    throw new EngineError("INVALID_ARGUMENT", "metadata preallocation is not supported for raw", {
      reason: "RAW_METADATA_PREALLOCATION",
    });
  }
  // qemu-img create rounds raw sizes up to whole sectors; so do we, so both see the same virtual size.
  const size = roundUpToSector(opts.size);
  const preallocated = Math.min(opts.preallocBytes ?? size, size);
  assertSize(preallocated, "preallocated bytes");
  await preallocate(file, 0, preallocated, opts.prealloc, {
    signal: opts.signal,
    onProgress: opts.onProgress,
  });
  // Sets the size in every mode: the thin remainder past a partial preallocation stays a hole.
  await file.truncate(size);
}

async function open(file: HostFile, opts: OpenOptions): Promise<BlockImage> {
  if (opts.backing !== undefined) {
    throw new EngineError("INVALID_ARGUMENT", "raw images cannot have a backing file", {
      reason: "RAW_NO_BACKING",
    });
  }
  const size = await file.size();
  return new RawImage(file, size, opts.readOnly || file.readOnly);
}

export const rawDriver: BlockDriver = {
  format: "raw",
  probe: () => RAW_PROBE_CONFIDENCE,
  create,
  open,
};
