import { type BlockImage, EngineError } from "@vdisk/engine";
import { toNumber } from "../rpc/convert.js";

/**
 * Turns a wire (offset, length) into a checked [start, end) inside the volume. length 0 means "to the end"
 * unless `requireLength`. Anything past the end is OUT_OF_RANGE (so iterators know to stop), never clipped.
 */
export function resolveRange(
  image: BlockImage,
  offset: bigint,
  length: bigint,
  requireLength: boolean,
): { start: number; end: number } {
  const start = toNumber(offset, "offset");
  let len = toNumber(length, "length");
  const size = image.virtualSize;
  if (start > size) {
    throw new EngineError("OUT_OF_RANGE", `offset ${start} is past the end of the volume (${size} bytes)`, {
      reason: "PAST_END",
      metadata: { capacity: String(size) },
    });
  }
  if (len === 0) {
    if (requireLength)
      throw new EngineError("INVALID_ARGUMENT", "length must be greater than 0", {
        reason: "INVALID_LENGTH",
        metadata: { field: "length" },
      });
    len = size - start;
  }
  if (start + len > size) {
    throw new EngineError(
      "OUT_OF_RANGE",
      `range ${start}+${len} is past the end of the volume (${size} bytes)`,
      { reason: "PAST_END", metadata: { capacity: String(size) } },
    );
  }
  return { start, end: start + len };
}
