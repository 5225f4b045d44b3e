import type { BlockImage, TruncateOptions } from "../block-image.js";
import { EngineError, throwIfAborted } from "../errors.js";
import type { IoOptions, ZeroDetection, ZeroOptions } from "../types.js";
import {
  assertAligned,
  assertByteCount,
  assertInImage,
  assertWritable,
  splitAtAlignment,
  splitRange,
} from "./range.js";
import { findZeroRuns, sharedZeroBuffer, ZERO_BUFFER_SIZE } from "./zero-buffer.js";

/**
 * The generic I/O layer (QEMU block/io.c, nbdkit server/backend.c): every request from a server or job
 * enters here. It validates ranges and permissions, splits to the driver's maxTransfer, emulates what a
 * driver lacks (zero writes, FUA) and only then calls the driver, which can therefore stay naive.
 */

/** Largest buffer readAt allocates on the caller's behalf; bigger reads must supply their own buffer. */
export const MAX_READ_ALLOCATION = 1024 * 1024 * 1024;

export interface WriteOptions extends IoOptions {
  /** Turn whole zero blocks into writeZeroes (QEMU detect-zeroes); "unmap" also lets them be deallocated. */
  zeroDetection?: ZeroDetection;
}

/** Options handed to drivers: FUA is emulated here, so drivers never see it. */
function driverOptions(opts: IoOptions | undefined): IoOptions {
  return opts?.signal === undefined ? {} : { signal: opts.signal };
}

/** Reads `length` bytes into a new buffer, or fills `into` entirely. */
export async function readAt(
  img: BlockImage,
  offset: number,
  length: number,
  opts?: IoOptions,
): Promise<Uint8Array>;
export async function readAt(
  img: BlockImage,
  offset: number,
  into: Uint8Array,
  opts?: IoOptions,
): Promise<Uint8Array>;
export async function readAt(
  img: BlockImage,
  offset: number,
  lengthOrInto: number | Uint8Array,
  opts?: IoOptions,
): Promise<Uint8Array> {
  let into: Uint8Array;
  if (typeof lengthOrInto === "number") {
    assertInImage(img, offset, lengthOrInto);
    if (lengthOrInto > MAX_READ_ALLOCATION) {
      throw new EngineError(
        "INVALID_ARGUMENT",
        `read of ${lengthOrInto} bytes exceeds ${MAX_READ_ALLOCATION}`,
        {
          reason: "READ_TOO_LARGE",
        },
      );
    }
    into = Buffer.allocUnsafe(lengthOrInto);
  } else {
    into = lengthOrInto;
    assertInImage(img, offset, into.length);
  }
  assertAligned(img, offset, into.length);
  const options = driverOptions(opts);
  for (const [pos, len] of splitRange(offset, into.length, img.limits.maxTransfer)) {
    throwIfAborted(opts?.signal);
    await img.read(pos, into.subarray(pos - offset, pos - offset + len), options);
  }
  return into;
}

/**
 * Writes `data` at `offset`. With zero detection on, whole zeroAlignment blocks of zeros become
 * writeZeroes requests (coalesced, so the driver sees few large ones) and only the rest is written.
 */
export async function writeAt(
  img: BlockImage,
  offset: number,
  data: Uint8Array,
  opts?: WriteOptions,
): Promise<void> {
  assertInImage(img, offset, data.length);
  assertAligned(img, offset, data.length);
  assertWritable(img);
  if (data.length === 0) return;
  const detection = opts?.zeroDetection ?? "off";
  if (detection === "off") {
    await writeData(img, offset, data, opts);
  } else {
    for (const run of findZeroRuns(offset, data, img.limits.zeroAlignment)) {
      const slice = data.subarray(run.start, run.start + run.length);
      if (!run.zero) {
        await writeData(img, offset + run.start, slice, opts);
        continue;
      }
      // The run's own bytes are zeros, so if the driver can't zero natively the cheapest fallback is
      // to write exactly those bytes rather than the shared zero buffer.
      await zeroRange(
        img,
        offset + run.start,
        run.length,
        { ...opts, mayUnmap: detection === "unmap" },
        (pos, len) => writeData(img, pos, data.subarray(pos - offset, pos - offset + len), opts),
      );
    }
  }
  if (opts?.fua === true) await img.flush(driverOptions(opts));
}

async function writeData(
  img: BlockImage,
  offset: number,
  data: Uint8Array,
  opts: IoOptions | undefined,
): Promise<void> {
  const options = driverOptions(opts);
  for (const [pos, len] of splitRange(offset, data.length, img.limits.maxTransfer)) {
    throwIfAborted(opts?.signal);
    await img.write(pos, data.subarray(pos - offset, pos - offset + len), options);
  }
}

/**
 * Makes the range read as zeros. Drivers that cannot (UNSUPPORTED) get zero buffers written instead,
 * unless `noFallback` asks for the error (QEMU BDRV_REQ_NO_FALLBACK).
 */
export async function writeZeroesAt(
  img: BlockImage,
  offset: number,
  length: number,
  opts?: ZeroOptions,
): Promise<void> {
  assertInImage(img, offset, length);
  assertAligned(img, offset, length);
  assertWritable(img);
  if (length === 0) return;
  await zeroRange(img, offset, length, opts, (pos, len) => writeZeroBuffers(img, pos, len, opts));
  if (opts?.fua === true) await img.flush(driverOptions(opts));
}

type Fallback = (offset: number, length: number) => Promise<void>;

async function zeroRange(
  img: BlockImage,
  offset: number,
  length: number,
  opts: ZeroOptions | undefined,
  fallback: Fallback,
): Promise<void> {
  const options: ZeroOptions = { ...driverOptions(opts) };
  if (opts?.mayUnmap === true) options.mayUnmap = true;
  // Unaligned head and tail go to the driver separately so the aligned middle can take its fast path.
  for (const [partOffset, partLength] of splitAtAlignment(offset, length, img.limits.zeroAlignment)) {
    for (const [pos, len] of splitRange(partOffset, partLength, img.limits.maxTransfer)) {
      throwIfAborted(opts?.signal);
      try {
        await img.writeZeroes(pos, len, options);
      } catch (error) {
        const engineError = EngineError.from(error);
        if (engineError.code !== "UNSUPPORTED" || opts?.noFallback === true) throw engineError;
        await fallback(pos, len);
      }
    }
  }
}

async function writeZeroBuffers(
  img: BlockImage,
  offset: number,
  length: number,
  opts: IoOptions | undefined,
): Promise<void> {
  const zeros = sharedZeroBuffer();
  const chunk = Math.min(ZERO_BUFFER_SIZE, img.limits.maxTransfer);
  const options = driverOptions(opts);
  for (const [pos, len] of splitRange(offset, length, chunk)) {
    throwIfAborted(opts?.signal);
    await img.write(pos, zeros.subarray(0, len), options);
  }
}

/** Frees the range where the driver can. Advisory: a driver without discard support makes this a no-op. */
export async function discardAt(
  img: BlockImage,
  offset: number,
  length: number,
  opts?: IoOptions,
): Promise<void> {
  assertInImage(img, offset, length);
  assertAligned(img, offset, length);
  assertWritable(img);
  if (length === 0) return;
  const options = driverOptions(opts);
  for (const [partOffset, partLength] of splitAtAlignment(offset, length, img.limits.discardAlignment)) {
    for (const [pos, len] of splitRange(partOffset, partLength, img.limits.maxTransfer)) {
      throwIfAborted(opts?.signal);
      try {
        await img.discard(pos, len, options);
      } catch (error) {
        const engineError = EngineError.from(error);
        if (engineError.code !== "UNSUPPORTED") throw engineError;
      }
    }
  }
  if (opts?.fua === true) await img.flush(options);
}

export async function flushImage(img: BlockImage, opts?: IoOptions): Promise<void> {
  if (img.readOnly) return;
  throwIfAborted(opts?.signal);
  await img.flush(driverOptions(opts));
}

/** Resizes the image. Shrinking needs prealloc "off" (QEMU refuses other modes the same way). */
export async function truncateImage(img: BlockImage, newSize: number, opts: TruncateOptions): Promise<void> {
  assertByteCount(newSize, "new size");
  assertWritable(img);
  if (newSize < img.virtualSize && opts.prealloc !== "off") {
    throw new EngineError("UNSUPPORTED", `shrinking with preallocation "${opts.prealloc}" is not supported`, {
      reason: "SHRINK_WITH_PREALLOCATION",
    });
  }
  throwIfAborted(opts.signal);
  if (newSize === img.virtualSize) return;
  await img.truncate(newSize, opts);
}
