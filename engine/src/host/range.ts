import { EngineError } from "../errors.js";

/** Offsets and lengths are non-negative integers whose end stays within 2^53 (exact as a JS number). */
export function checkRange(offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new EngineError("INVALID_ARGUMENT", `invalid host file range: offset ${offset}, length ${length}`, {
      reason: "HOST_INVALID_RANGE",
    });
  }
  if (offset + length > Number.MAX_SAFE_INTEGER) {
    throw new EngineError("OUT_OF_RANGE", "host file range ends beyond 2^53", { reason: "HOST_RANGE_TOO_LARGE" });
  }
}
