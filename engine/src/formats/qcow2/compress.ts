import { inflateRawSync, constants as zlibConstants } from "node:zlib";
import { corrupt } from "./errors.js";

/**
 * Inflates one compressed cluster. QEMU stores raw deflate (no zlib header, window 2^12) and knows
 * the compressed length only to 512-byte precision, so trailing bytes after the stream are normal and
 * a stream cut short is tolerated — but only an output of exactly one cluster is valid. The output
 * is capped at the cluster size, which bounds the work a hostile stream can cause.
 */
export function inflateCluster(compressed: Uint8Array, clusterSize: number): Buffer {
  let out: Buffer;
  try {
    out = inflateRawSync(compressed, {
      windowBits: 12,
      maxOutputLength: clusterSize,
      finishFlush: zlibConstants.Z_SYNC_FLUSH,
    });
  } catch (cause) {
    throw corrupt(
      "QCOW2_BAD_COMPRESSED_CLUSTER",
      `compressed cluster does not inflate to ${clusterSize} bytes`,
      {
        detail: cause instanceof Error ? cause.message.slice(0, 100) : "inflate failed",
      },
    );
  }
  if (out.length !== clusterSize) {
    throw corrupt(
      "QCOW2_BAD_COMPRESSED_CLUSTER",
      `compressed cluster inflates to ${out.length} bytes, not ${clusterSize}`,
    );
  }
  return out;
}
