import type { CreateOptions } from "../../block-image.js";
import { throwIfAborted } from "../../errors.js";
import type { HostFile } from "../../host/host-file.js";
import { randomCid, serializeDescriptor } from "./descriptor.js";
import { invalidArgument, unsupported } from "./errors.js";
import {
  FLAG_NL_DETECT,
  FLAG_REDUNDANT_GD,
  FLAG_ZEROED_GRAIN,
  SECTOR_SIZE,
  serializeSparseHeader,
} from "./header.js";
import {
  checkCreateGeometry,
  DEFAULT_GRAIN_SIZE,
  DEFAULT_HW_VERSION,
  DEFAULT_TOOLS_VERSION,
  DESCRIPTOR_SECTORS,
  GTES_PER_GT,
  sectorsFor,
} from "./layout.js";
import { encodeU32Table } from "./le.js";
import { createStreamOptimizedWriter } from "./stream-writer.js";

/** Name recorded in the descriptor's extent line; readers of monolithic images ignore it. */
const EXTENT_FILE_NAME = "disk.vmdk";

/**
 * Creates a new image in an empty file. monolithicSparse follows QEMU's layout exactly (descriptor at
 * sector 1, redundant GD + all its GTs, GD + all its GTs, data from a grain-aligned offset); the tables
 * are preallocated, so no allocation ever has to grow metadata. streamOptimized writes an empty stream.
 */
export async function createVmdk(file: HostFile, opts: CreateOptions): Promise<void> {
  throwIfAborted(opts.signal);
  if (opts.prealloc !== "off") {
    throw invalidArgument(
      "VMDK_PREALLOC_UNSUPPORTED",
      "vmdk images support only preallocation=off (as in QEMU)",
    );
  }
  if (opts.backing !== undefined)
    throw unsupported("VMDK_BACKING_UNSUPPORTED", "vmdk images cannot have a backing file here");
  const grainSize = opts.clusterSize ?? DEFAULT_GRAIN_SIZE;
  checkCreateGeometry(opts.size, grainSize);
  const subformat = opts.vmdk?.subformat ?? "monolithicSparse";
  const adapterType = opts.vmdk?.adapterType ?? "ide";
  if (subformat === "streamOptimized") {
    if (opts.vmdk?.zeroedGrain) {
      throw invalidArgument("VMDK_BAD_OPTION", "streamOptimized images have no zeroed grains");
    }
    let at = 0;
    const writer = createStreamOptimizedWriter({
      size: opts.size,
      grainSize,
      adapterType,
      write: async (bytes) => {
        await file.write(at, bytes, { point: "create" });
        at += bytes.length;
      },
    });
    await writer.finish();
    opts.onProgress?.(opts.size, opts.size);
    return;
  }

  const zeroedGrain = opts.vmdk?.zeroedGrain ?? false;
  const capacitySectors = opts.size / SECTOR_SIZE;
  const grainSectors = grainSize / SECTOR_SIZE;
  const grains = Math.ceil(capacitySectors / grainSectors);
  const gtSectors = sectorsFor(GTES_PER_GT * 4);
  const gtCount = Math.ceil(grains / GTES_PER_GT);
  const gdSectors = sectorsFor(gtCount * 4);
  const rgdOffset = 1 + DESCRIPTOR_SECTORS;
  const gdOffset = rgdOffset + gdSectors + gtSectors * gtCount;
  const grainOffset = Math.ceil((gdOffset + gdSectors + gtSectors * gtCount) / grainSectors) * grainSectors;

  const header = serializeSparseHeader({
    version: zeroedGrain ? 2 : 1,
    flags: FLAG_NL_DETECT | FLAG_REDUNDANT_GD | (zeroedGrain ? FLAG_ZEROED_GRAIN : 0),
    capacity: BigInt(capacitySectors),
    granularity: BigInt(grainSectors),
    descOffset: 1n,
    descSize: BigInt(DESCRIPTOR_SECTORS),
    numGtesPerGt: GTES_PER_GT,
    rgdOffset: BigInt(rgdOffset),
    gdOffset: BigInt(gdOffset),
    grainOffset: BigInt(grainOffset),
    compressAlgorithm: 0,
  });
  const descriptor = new TextEncoder().encode(
    serializeDescriptor({
      cid: randomCid(),
      createType: "monolithicSparse",
      capacitySectors,
      fileName: EXTENT_FILE_NAME,
      adapterType,
      hwVersion: DEFAULT_HW_VERSION,
      toolsVersion: DEFAULT_TOOLS_VERSION,
    }),
  );
  // The zeroed grain tables come from extending the file (sparse), not from writing zeros.
  await file.truncate(grainOffset * SECTOR_SIZE);
  await file.write(0, header, { point: "create" });
  await file.write(SECTOR_SIZE, descriptor, { point: "create" });
  const directory = (firstTable: number) =>
    encodeU32Table(
      Array.from({ length: gtCount }, (_, i) => firstTable + i * gtSectors),
      gdSectors * SECTOR_SIZE,
    );
  await file.write(rgdOffset * SECTOR_SIZE, directory(rgdOffset + gdSectors), { point: "create" });
  await file.write(gdOffset * SECTOR_SIZE, directory(gdOffset + gdSectors), { point: "create" });
  await file.flush({ point: "create.flush" });
  opts.onProgress?.(opts.size, opts.size);
}
