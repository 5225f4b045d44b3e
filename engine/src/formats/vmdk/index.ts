import type { BlockDriver, BlockImage, OpenOptions } from "../../block-image.js";
import type { HostFile } from "../../host/host-file.js";
import { createVmdk } from "./create.js";
import { invalidArgument } from "./errors.js";
import { GrainTables } from "./grain-tables.js";
import { hasVmdk4Magic } from "./header.js";
import { readVmdkMetadata } from "./metadata.js";
import { VmdkSparseImage } from "./sparse-image.js";

/*
 * The vmdk driver: monolithicSparse read/write and streamOptimized read (opened read-only), both only
 * as single self-contained files. streamOptimized output for export/convert comes from the single-pass
 * producer below (createStreamOptimizedWriter / writeStreamOptimized), which never seeks back, so its
 * bytes can go straight into a network stream. inspectVmdk is the pure check for upload inspection.
 */
export { inspectVmdk, type VmdkInspection } from "./metadata.js";
export {
  createStreamOptimizedWriter,
  type StreamOptimizedWriter,
  type StreamOptimizedWriterOptions,
  type StreamSource,
  writeStreamOptimized,
} from "./stream-writer.js";

async function openVmdk(file: HostFile, opts: OpenOptions): Promise<BlockImage> {
  if (opts.backing !== undefined) {
    // Parent links are refused at open, so there is never a layer to read through.
    throw invalidArgument("VMDK_BACKING_UNSUPPORTED", "vmdk images don't take a backing layer");
  }
  const fileSize = await file.size();
  const meta = await readVmdkMetadata(async (offset, length) => {
    const bytes = new Uint8Array(length);
    await file.readFull(offset, bytes);
    return bytes;
  }, fileSize);
  const tables = await GrainTables.load(file, meta.layout, fileSize);
  return new VmdkSparseImage(file, meta, tables, fileSize, opts.readOnly);
}

export const vmdkDriver: BlockDriver = {
  format: "vmdk",
  probe(head: Uint8Array): number {
    return hasVmdk4Magic(head) ? 100 : 0;
  },
  create: createVmdk,
  open: openVmdk,
};
