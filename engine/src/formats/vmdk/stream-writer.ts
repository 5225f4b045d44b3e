import { promisify } from "node:util";
import { deflate } from "node:zlib";
import { throwIfAborted } from "../../errors.js";
import { randomCid, serializeDescriptor, type VmdkAdapterType } from "./descriptor.js";
import { invalidArgument, vmdkError } from "./errors.js";
import {
  COMPRESSION_DEFLATE,
  FLAG_COMPRESSED,
  FLAG_MARKERS,
  FLAG_NL_DETECT,
  GD_AT_END,
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
  padToSector,
  sectorsFor,
} from "./layout.js";
import { encodeU32Table } from "./le.js";
import {
  GRAIN_MARKER_SIZE,
  grainMarkerHeader,
  MARKER_FOOTER,
  MARKER_GD,
  MARKER_GT,
  metadataMarker,
} from "./markers.js";

const deflateAsync = promisify(deflate);

export interface StreamOptimizedWriterOptions {
  /** Virtual size in bytes (a multiple of 512). */
  size: number;
  /** Grain size in bytes (default 64 KiB, as QEMU and VMware use). */
  grainSize?: number;
  /** Extent name recorded in the embedded descriptor (the file's own name; no path). Default "disk.vmdk". */
  fileName?: string;
  adapterType?: VmdkAdapterType;
  /** zlib level 0–9 (default 6). */
  compressionLevel?: number;
  /** Receives the file's bytes strictly in order; the writer never seeks back. */
  write: (bytes: Uint8Array) => Promise<void>;
}

export interface StreamOptimizedWriter {
  readonly grainSize: number;
  readonly grainCount: number;
  /** Bytes handed to `write` so far. */
  readonly bytesWritten: number;
  /**
   * Adds grain `index` (strictly increasing across calls; gaps read as zeros). `data` is the grain's
   * guest bytes: grainSize long, or the remainder of the disk for the last grain. All-zero grains are
   * left out of the file.
   */
  writeGrain(index: number, data: Uint8Array): Promise<void>;
  /** Writes the grain tables still pending, the grain directory, the footer and the end-of-stream marker. */
  finish(): Promise<void>;
}

/**
 * A single-pass VDF 5.0 streamOptimized producer: header (gd_offset = GD_AT_END) and descriptor, then
 * marker-prefixed zlib grains, each grain table behind a GT marker once its 512 grains are passed, the
 * grain directory behind a GD marker, a footer marker + footer header carrying the real gd_offset, and
 * a final end-of-stream marker (which QEMU omits and ESXi requires). Only one grain table is in memory.
 */
export function createStreamOptimizedWriter(opts: StreamOptimizedWriterOptions): StreamOptimizedWriter {
  const grainSize = opts.grainSize ?? DEFAULT_GRAIN_SIZE;
  checkCreateGeometry(opts.size, grainSize);
  const fileName = opts.fileName ?? "disk.vmdk";
  if (!/^[^/\\"\p{Cc}]{1,255}$/u.test(fileName)) {
    throw invalidArgument("VMDK_BAD_FILE_NAME", "extent name must be a plain file name");
  }
  const capacitySectors = opts.size / SECTOR_SIZE;
  const grainSectors = grainSize / SECTOR_SIZE;
  const grainCount = Math.ceil(opts.size / grainSize);
  const gdEntries = Math.ceil(grainCount / GTES_PER_GT);
  const gtSectors = sectorsFor(GTES_PER_GT * 4);
  const grainOffsetSectors = Math.ceil((1 + DESCRIPTOR_SECTORS) / grainSectors) * grainSectors;
  const level = opts.compressionLevel ?? 6;

  const headerFields = (gdOffset: bigint) => ({
    version: 3,
    flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
    capacity: BigInt(capacitySectors),
    granularity: BigInt(grainSectors),
    descOffset: 1n,
    descSize: BigInt(DESCRIPTOR_SECTORS),
    numGtesPerGt: GTES_PER_GT,
    rgdOffset: 0n,
    gdOffset,
    grainOffset: BigInt(grainOffsetSectors),
    compressAlgorithm: COMPRESSION_DEFLATE,
  });

  const gd = new Uint32Array(gdEntries);
  let gt = new Uint32Array(GTES_PER_GT);
  let gtIndex = 0;
  let gtUsed = false;
  let position = 0;
  let started = false;
  let finished = false;
  let lastIndex = -1;
  let busy = false;

  const emit = async (bytes: Uint8Array) => {
    await opts.write(bytes);
    position += bytes.length;
  };

  const start = async () => {
    if (started) return;
    started = true;
    await emit(serializeSparseHeader(headerFields(GD_AT_END)));
    const descriptor = serializeDescriptor({
      cid: randomCid(),
      createType: "streamOptimized",
      capacitySectors,
      fileName,
      adapterType: opts.adapterType ?? "ide",
      hwVersion: DEFAULT_HW_VERSION,
      toolsVersion: DEFAULT_TOOLS_VERSION,
    });
    const region = new Uint8Array((grainOffsetSectors - 1) * SECTOR_SIZE);
    region.set(new TextEncoder().encode(descriptor));
    await emit(region);
  };

  const flushTable = async () => {
    if (!gtUsed) return;
    await emit(metadataMarker(MARKER_GT, gtSectors));
    gd[gtIndex] = position / SECTOR_SIZE;
    await emit(padToSector(encodeU32Table(gt)));
    gt = new Uint32Array(GTES_PER_GT);
    gtUsed = false;
  };

  // Calls must not overlap: the output is one ordered byte stream.
  const exclusive = async <T>(task: () => Promise<T>): Promise<T> => {
    if (busy) throw invalidArgument("VMDK_WRITER_BUSY", "stream writer calls must not overlap");
    if (finished)
      throw vmdkError("FAILED_PRECONDITION", "VMDK_WRITER_FINISHED", "stream writer already finished");
    busy = true;
    try {
      return await task();
    } finally {
      busy = false;
    }
  };

  return {
    grainSize,
    grainCount,
    get bytesWritten() {
      return position;
    },
    writeGrain(index, data) {
      return exclusive(async () => {
        if (!Number.isSafeInteger(index) || index <= lastIndex || index >= grainCount) {
          throw invalidArgument("VMDK_BAD_GRAIN_INDEX", `grain ${index} is out of order or out of range`);
        }
        const expected = Math.min(grainSize, opts.size - index * grainSize);
        if (data.length !== expected) {
          throw invalidArgument(
            "VMDK_BAD_GRAIN_LENGTH",
            `grain ${index} must be ${expected} bytes, got ${data.length}`,
          );
        }
        lastIndex = index;
        if (isAllZero(data)) return;
        await start();
        const table = Math.floor(index / GTES_PER_GT);
        if (table !== gtIndex) {
          await flushTable();
          gtIndex = table;
        }
        const compressed = await deflateAsync(data, { level });
        const record = new Uint8Array(sectorsFor(GRAIN_MARKER_SIZE + compressed.length) * SECTOR_SIZE);
        record.set(grainMarkerHeader(index * grainSectors, compressed.length));
        record.set(compressed, GRAIN_MARKER_SIZE);
        gt[index % GTES_PER_GT] = position / SECTOR_SIZE;
        gtUsed = true;
        await emit(record);
      });
    },
    finish() {
      return exclusive(async () => {
        await start();
        await flushTable();
        const gdBytes = padToSector(encodeU32Table(gd));
        await emit(metadataMarker(MARKER_GD, gdBytes.length / SECTOR_SIZE));
        const gdOffset = position / SECTOR_SIZE;
        await emit(gdBytes);
        await emit(metadataMarker(MARKER_FOOTER, 1));
        await emit(serializeSparseHeader(headerFields(BigInt(gdOffset))));
        await emit(new Uint8Array(SECTOR_SIZE)); // end-of-stream marker: val 0, size 0, type EOS
        finished = true;
      });
    },
  };
}

function isAllZero(data: Uint8Array): boolean {
  const words =
    data.byteOffset % 4 === 0 && data.length % 4 === 0
      ? new Uint32Array(data.buffer, data.byteOffset, data.length / 4)
      : data;
  for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  return true;
}

/** Anything that can be read like a disk: an opened image or the core's chain view. */
export interface StreamSource {
  readonly size: number;
  read(offset: number, into: Uint8Array): Promise<void>;
  /** Optional hint: true if [offset, offset + length) is known to read as zeros (skips the read). */
  isZero?(offset: number, length: number): Promise<boolean>;
}

/** Copies a whole source into streamOptimized form in one pass (export/convert); returns bytes produced. */
export async function writeStreamOptimized(
  source: StreamSource,
  opts: Omit<StreamOptimizedWriterOptions, "size"> & {
    signal?: AbortSignal;
    onProgress?: (done: number, total: number) => void;
  },
): Promise<number> {
  const writer = createStreamOptimizedWriter({ ...opts, size: source.size });
  const buffer = new Uint8Array(writer.grainSize);
  for (let index = 0; index < writer.grainCount; index++) {
    throwIfAborted(opts.signal);
    const offset = index * writer.grainSize;
    const length = Math.min(writer.grainSize, source.size - offset);
    if (source.isZero !== undefined && (await source.isZero(offset, length))) continue;
    const data = buffer.subarray(0, length);
    await source.read(offset, data);
    await writer.writeGrain(index, data);
    opts.onProgress?.(offset + length, source.size);
  }
  await writer.finish();
  return writer.bytesWritten;
}
