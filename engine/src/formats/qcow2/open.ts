import { splitNumber } from "../../binary/big-endian.js";
import type { CreateOptions, OpenOptions } from "../../block-image.js";
import { EngineError } from "../../errors.js";
import type { HostFile } from "../../host/host-file.js";
import { checkImage } from "./check.js";
import { corrupt, invalidArgument } from "./errors.js";
import {
  COMPAT_LAZY_REFCOUNTS,
  FIELD,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTENDED_L2,
  MAX_BACKING_NAME,
  MAX_CLUSTER_BITS,
  MIN_CLUSTER_BITS,
  parseHeader,
  peekClusterBits,
  QCOW2_MAGIC,
  type Qcow2Header,
  serializedHeaderLength,
  serializeHeader,
  V3_HEADER_LENGTH,
  withBackingFormat,
} from "./header.js";
import { alignUp, l1EntriesFor, makeLayout } from "./layout.js";
import { Qcow2Metadata } from "./metadata.js";
import { preallocateRange, Qcow2Image } from "./qcow2-image.js";
import { setRefcountEntry } from "./refcount-entry.js";
import { MAX_SNAPSHOT_TABLE_BYTES, parseSnapshotTable } from "./snapshot.js";

/** 0..100 confidence that `head` starts a qcow2 image (magic and a version we know). */
export function probeQcow2(head: Uint8Array): number {
  if (head.length < 8) return 0;
  const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
  if (dv.getUint32(0) !== QCOW2_MAGIC) return 0;
  const version = dv.getUint32(4);
  return version === 2 || version === 3 ? 100 : 50;
}

async function readHeader(file: HostFile): Promise<{ header: Qcow2Header; fileSize: number }> {
  const fileSize = await file.size();
  if (fileSize < 72) throw corrupt("QCOW2_TRUNCATED", "file is shorter than a qcow2 header");
  const head = Buffer.alloc(V3_HEADER_LENGTH);
  await file.readFull(0, head);
  const clusterBits = peekClusterBits(head);
  const cluster0 = Buffer.alloc(2 ** clusterBits);
  await file.readFull(0, cluster0);
  return { header: parseHeader(cluster0, fileSize), fileSize };
}

/**
 * Opens a qcow2 image: validates the header (header.ts), loads the active L1 and the refcount table,
 * reads the snapshot table, and — for a writable open — clears autoclear bits we don't maintain and
 * repairs an image left dirty by lazy refcounts before anything else touches it.
 */
export async function openQcow2(file: HostFile, opts: OpenOptions): Promise<Qcow2Image> {
  const { header, fileSize } = await readHeader(file);
  const readOnly = opts.readOnly || file.readOnly;
  if (!readOnly && (header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n) {
    throw corrupt("QCOW2_CORRUPT", "image is marked corrupt; it can only be opened read-only");
  }
  if (header.backingFile !== undefined && opts.backing === undefined && !opts.allowMissingBacking) {
    throw new EngineError(
      "FAILED_PRECONDITION",
      "qcow2: the image has a backing file, but none was supplied",
      {
        reason: "QCOW2_BACKING_REQUIRED",
      },
    );
  }
  const cs = 2 ** header.clusterBits;
  const l1 = Buffer.alloc(header.l1Size * 8);
  if (l1.length > 0) await file.readFull(header.l1TableOffset, l1);
  const reftable = Buffer.alloc(header.refcountTableClusters * cs);
  await file.readFull(header.refcountTableOffset, reftable);

  const md = new Qcow2Metadata(file, header, l1);
  md.installRefcounts(
    reftable,
    header.refcountTableOffset,
    header.refcountTableClusters,
    alignUp(fileSize, cs),
  );
  if (header.nbSnapshots > 0) {
    const bytes = Math.min(MAX_SNAPSHOT_TABLE_BYTES, fileSize - header.snapshotsOffset);
    const table = Buffer.alloc(bytes);
    await file.readFull(header.snapshotsOffset, table);
    const parsed = parseSnapshotTable(table, header.nbSnapshots, header.version, cs, fileSize);
    md.snapshots = parsed.entries;
    md.snapshotTableBytes = parsed.tableBytes;
  }
  md.lazyRefcounts = header.version === 3 && (header.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;

  const image = new Qcow2Image(md, readOnly, opts.backing);
  if (!readOnly) {
    if (header.autoclearFeatures !== 0n) {
      // We maintain no autoclear feature (not even bitmaps): clearing the bits tells QEMU their data may be stale.
      header.autoclearFeatures = 0n;
      await md.writeFeatureField(FIELD.autoclear, 0n);
    }
    if ((header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n) {
      const repaired = await checkImage(md, "all");
      if (repaired.corruptions > 0) {
        throw corrupt("QCOW2_REPAIR_FAILED", "could not repair dirty image");
      }
      await md.markClean();
    }
  }
  return image;
}

function validateCreate(opts: CreateOptions): { clusterBits: number; refcountOrder: number; version: 2 | 3 } {
  const size = opts.size;
  if (!Number.isSafeInteger(size) || size < 0)
    throw invalidArgument("QCOW2_BAD_SIZE", "invalid virtual size");
  const cs = opts.clusterSize ?? 65536;
  const clusterBits = Math.log2(cs);
  if (!Number.isInteger(clusterBits) || clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw invalidArgument(
      "QCOW2_BAD_CLUSTER_SIZE",
      "cluster size must be a power of two between 512 B and 2 MiB",
    );
  }
  const q = opts.qcow2 ?? {};
  const version = q.compat === "0.10" ? 2 : 3;
  const refcountBits = q.refcountBits ?? 16;
  const refcountOrder = Math.log2(refcountBits);
  if (!Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > 6) {
    throw invalidArgument("QCOW2_BAD_REFCOUNT_BITS", "refcount bits must be a power of two from 1 to 64");
  }
  if (version === 2 && refcountBits !== 16)
    throw invalidArgument("QCOW2_BAD_REFCOUNT_BITS", "compat 0.10 needs 16-bit refcounts");
  if (version === 2 && q.lazyRefcounts)
    throw invalidArgument("QCOW2_LAZY_NEEDS_V3", "lazy refcounts need compat 1.1");
  if (q.extendedL2 && (version === 2 || clusterBits < 14)) {
    throw invalidArgument(
      "QCOW2_BAD_EXTENDED_L2",
      "extended L2 needs compat 1.1 and clusters of at least 16 KiB",
    );
  }
  if (opts.prealloc !== "off" && opts.backing) {
    throw invalidArgument("QCOW2_PREALLOC_WITH_BACKING", "preallocation is not possible with a backing file");
  }
  if (
    opts.preallocBytes !== undefined &&
    (!Number.isSafeInteger(opts.preallocBytes) || opts.preallocBytes < 0)
  ) {
    throw invalidArgument("QCOW2_BAD_SIZE", "invalid preallocation length");
  }
  if (opts.backing) {
    const name = opts.backing.link.fileName;
    if (name.length === 0 || Buffer.byteLength(name, "utf8") > MAX_BACKING_NAME) {
      throw invalidArgument("QCOW2_BACKING_NAME_TOO_LONG", "backing file name is empty or too long");
    }
  }
  return { clusterBits, refcountOrder, version };
}

/**
 * Writes a new image (QEMU's layout: header, refcount table, refcount block(s), L1), then preallocates
 * through the normal allocation path. The file stays open for the caller.
 */
export async function createQcow2(file: HostFile, opts: CreateOptions): Promise<void> {
  const { clusterBits, refcountOrder, version } = validateCreate(opts);
  const q = opts.qcow2 ?? {};
  const cs = 2 ** clusterBits;
  const layout = makeLayout(clusterBits, refcountOrder, q.extendedL2 === true);
  const l1Entries = l1EntriesFor(layout, opts.size);
  const l1Clusters = Math.ceil((l1Entries * 8) / cs);

  let header: Qcow2Header = {
    version,
    backingFileOffset: 0,
    backingFile: opts.backing?.link.fileName,
    clusterBits,
    size: opts.size,
    cryptMethod: 0,
    l1Size: l1Entries,
    l1TableOffset: 0,
    refcountTableOffset: 0,
    refcountTableClusters: 0,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: q.extendedL2 ? INCOMPAT_EXTENDED_L2 : 0n,
    compatibleFeatures: q.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n,
    autoclearFeatures: 0n,
    refcountOrder: version === 2 ? 4 : refcountOrder,
    headerLength: version === 3 ? 112 : 72,
    // compression_type = zlib, then padding to a multiple of 8 (QEMU writes 112-byte v3 headers).
    headerTail: version === 3 ? new Uint8Array(8) : new Uint8Array(0),
    extensions: [],
  };
  if (opts.backing) header = withBackingFormat(header, opts.backing.link.format);
  if (serializedHeaderLength(header) > cs) {
    throw invalidArgument("QCOW2_HEADER_TOO_LARGE", "header and backing name do not fit in one cluster");
  }
  // QEMU's order: header | refcount blocks | refcount table | L1. Sizes by fixpoint, since the
  // refcount blocks must also count themselves and the table.
  let blocks = 1;
  let tableClusters = 1;
  for (;;) {
    const total = 1 + blocks + tableClusters + l1Clusters;
    const nextBlocks = Math.max(blocks, Math.ceil(total / layout.refcountsPerBlock));
    const nextTable = Math.max(tableClusters, Math.ceil((nextBlocks * 8) / cs));
    if (nextBlocks === blocks && nextTable === tableClusters) break;
    blocks = nextBlocks;
    tableClusters = nextTable;
  }
  const total = 1 + blocks + tableClusters + l1Clusters;
  const structure = Buffer.alloc((blocks + tableClusters) * cs);
  for (let c = 0; c < total; c++) {
    const b = Math.floor(c / layout.refcountsPerBlock);
    setRefcountEntry(
      structure.subarray(b * cs, (b + 1) * cs),
      c % layout.refcountsPerBlock,
      layout.refcountBits,
      1,
    );
  }
  for (let i = 0; i < blocks; i++) {
    const { hi, lo } = splitNumber((1 + i) * cs);
    structure.writeUInt32BE(hi, blocks * cs + i * 8);
    structure.writeUInt32BE(lo, blocks * cs + i * 8 + 4);
  }
  header.refcountTableOffset = (1 + blocks) * cs;
  header.refcountTableClusters = tableClusters;
  header.l1TableOffset = (1 + blocks + tableClusters) * cs;

  const head = Buffer.alloc(cs);
  head.set(serializeHeader(header));
  const l1 = Buffer.alloc(l1Clusters * cs);
  await file.writev(0, [head, structure, l1], { point: "create" });
  if ((await file.size()) < total * cs) await file.truncate(total * cs);

  const image = await openQcow2(file, {
    readOnly: false,
    ...(opts.backing ? { backing: opts.backing.image } : {}),
  });
  // The file is new and nothing refers to it yet: its writes need no order among themselves, only to be
  // durable when create returns. One fdatasync at the end (the last flush, counting the structure written
  // above) instead of one after the structure and five per preallocation flush.
  image.md.orderedFlush = false;
  image.md.noteWrite();
  const preallocEnd = Math.min(opts.size, opts.preallocBytes ?? opts.size);
  try {
    await preallocateRange(image, 0, preallocEnd, opts);
  } finally {
    // A cancelled preallocation leaves a valid image with a preallocated prefix. Release may clear a lazy
    // refcounts dirty bit, a header change that again needs its barrier.
    image.md.orderedFlush = true;
    await image.release();
  }
}
