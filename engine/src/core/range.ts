import type { BlockImage } from "../block-image.js";
import { EngineError } from "../errors.js";

/** Rejects anything that is not a non-negative safe integer: NaN, fractions and values above 2^53 never reach a driver. */
export function assertByteCount(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new EngineError("OUT_OF_RANGE", `${what} must be a non-negative integer below 2^53, got ${value}`, {
      reason: "BAD_BYTE_COUNT",
    });
  }
}

/** The request [offset, offset+length) must lie inside the image's virtual size. */
export function assertInImage(img: BlockImage, offset: number, length: number): void {
  assertByteCount(offset, "offset");
  assertByteCount(length, "length");
  if (offset + length > img.virtualSize) {
    throw new EngineError(
      "OUT_OF_RANGE",
      `range ${offset}+${length} lies past the end of the image (virtual size ${img.virtualSize})`,
      { reason: "PAST_END_OF_IMAGE", metadata: { offset: String(offset), length: String(length) } },
    );
  }
}

export function assertWritable(img: BlockImage): void {
  if (img.readOnly)
    throw new EngineError("READ_ONLY", "the image is open read-only", { reason: "IMAGE_READ_ONLY" });
}

/**
 * Splits [offset, offset+length) into pieces of at most `maxPiece` bytes. Pieces after the first start on
 * a multiple of `maxPiece`, so a driver sees the same boundaries whatever the request's alignment.
 */
export function* splitRange(offset: number, length: number, maxPiece: number): Generator<[number, number]> {
  if (!Number.isSafeInteger(maxPiece) || maxPiece <= 0) {
    throw new EngineError("INTERNAL", `driver limit must be a positive integer, got ${maxPiece}`);
  }
  const end = offset + length;
  let pos = offset;
  while (pos < end) {
    const boundary = (Math.floor(pos / maxPiece) + 1) * maxPiece;
    const pieceEnd = Math.min(end, boundary);
    yield [pos, pieceEnd - pos];
    pos = pieceEnd;
  }
}

/**
 * Splits a range at `alignment` boundaries into an unaligned head, an aligned middle and an unaligned
 * tail (each omitted when empty), so the aligned middle can take a driver's fast path.
 */
export function splitAtAlignment(offset: number, length: number, alignment: number): Array<[number, number]> {
  const end = offset + length;
  if (alignment <= 1) return length > 0 ? [[offset, length]] : [];
  const alignedStart = Math.ceil(offset / alignment) * alignment;
  const alignedEnd = Math.floor(end / alignment) * alignment;
  if (alignedStart >= alignedEnd) return length > 0 ? [[offset, length]] : [];
  const parts: Array<[number, number]> = [];
  if (alignedStart > offset) parts.push([offset, alignedStart - offset]);
  parts.push([alignedStart, alignedEnd - alignedStart]);
  if (end > alignedEnd) parts.push([alignedEnd, end - alignedEnd]);
  return parts;
}

/**
 * Every driver today takes byte-granular requests (requestAlignment 1). For a driver that declares a
 * coarser alignment the core refuses unaligned requests rather than doing an unserialised
 * read-modify-write that concurrent writers could tear. The end of the image counts as aligned.
 */
export function assertAligned(img: BlockImage, offset: number, length: number): void {
  const alignment = img.limits.requestAlignment;
  if (alignment <= 1) return;
  const end = offset + length;
  if (offset % alignment !== 0 || (end % alignment !== 0 && end !== img.virtualSize)) {
    throw new EngineError(
      "INVALID_ARGUMENT",
      `request ${offset}+${length} is not aligned to ${alignment} bytes`,
      {
        reason: "UNALIGNED_REQUEST",
      },
    );
  }
}
