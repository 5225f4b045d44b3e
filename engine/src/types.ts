/** Formats the engine reads and writes. The format of a stored volume is never re-detected from content. */
export type FormatName = "raw" | "qcow2" | "vmdk";

/** QEMU's PreallocMode: off (thin), metadata (qcow2 tables only), falloc (fallocate), full (write zeros). */
export type PreallocMode = "off" | "metadata" | "falloc" | "full";

/** Zero detection on writes (QEMU detect-zeroes): off, on (zero clusters/holes kept allocated), unmap (free them). */
export type ZeroDetection = "off" | "on" | "unmap";

/** Progress callback for long engine operations: bytes done out of an estimated total. Cheap to call often. */
export type ProgressFn = (doneBytes: number, totalBytes: number, phase?: string) => void;

export interface IoOptions {
  signal?: AbortSignal;
  /** Force unit access: the write is durable when the call returns (the core emulates it with a flush). */
  fua?: boolean;
  /**
   * Names the write for fault injection and tracing (e.g. "l2_update", "grain_write"); no effect on
   * behaviour. Dotted names refine a point: a fault on "l1_grow" also matches "l1_grow.write_table".
   */
  point?: string;
}

export interface ZeroOptions extends IoOptions {
  /** The range may be deallocated (QEMU BDRV_REQ_MAY_UNMAP) as long as it still reads as zeros. */
  mayUnmap?: boolean;
  /** Fail with UNSUPPORTED rather than falling back to writing zero buffers (BDRV_REQ_NO_FALLBACK). */
  noFallback?: boolean;
}

/**
 * What one layer says about the run starting at the queried offset — for ITSELF only.
 * `allocated: false` means "this layer defers to its backing" (qcow2 unallocated cluster with a backing
 * file, or no backing: then the core reports zeros). `length` is > 0 and may exceed the query (it is a
 * hint, like QEMU's pnum); the core clamps it.
 */
export interface LayerStatus {
  length: number;
  /** This layer determines the content of the run (QEMU BDRV_BLOCK_ALLOCATED). */
  allocated: boolean;
  /** The run's bytes come from stored data (BDRV_BLOCK_DATA). */
  data: boolean;
  /** The run is known to read as zeros (BDRV_BLOCK_ZERO). */
  zero: boolean;
  /** Offset of the run in the host file when it maps linearly (BDRV_BLOCK_OFFSET_VALID). */
  hostOffset?: number;
  compressed?: boolean;
}

/** One extent of an allocation map, with qemu-img map --output=json semantics. */
export interface Extent {
  start: number;
  length: number;
  /** Layer that resolved the run: 0 = the volume itself, 1 = its backing, ... */
  depth: number;
  /** false: no layer of the (possibly base-limited) chain has the data. */
  present: boolean;
  zero: boolean;
  data: boolean;
  compressed: boolean;
  /** Host offset in the file of layer `depth`, when valid (qemu-img's "offset"). */
  offset?: number;
}

export interface Limits {
  /** Requests are aligned to this by the core (read-modify-write where needed). 1 for all our drivers today. */
  requestAlignment: number;
  /** Largest single request the driver accepts; the core splits larger ones. */
  maxTransfer: number;
  /** Granularity at which writeZeroes can avoid writing data (qcow2: cluster size). */
  zeroAlignment: number;
  /** Granularity at which discard frees space (qcow2: cluster size). */
  discardAlignment: number;
}

export interface CheckResult {
  /** Metadata inconsistencies that may lose data (qemu-img check "corruptions"). */
  corruptions: number;
  /** Clusters allocated but unreferenced (qemu-img check "leaks"). */
  leaks: number;
  corruptionsFixed: number;
  leaksFixed: number;
  /** Problems with the check itself (qemu-img "check errors"). */
  checkErrors: number;
  /** Image end offset in the host file (qemu-img "image-end-offset"). */
  imageEndOffset?: number;
  allocatedClusters?: number;
  totalClusters?: number;
  fragmentedClusters?: number;
  compressedClusters?: number;
  /** Human-readable findings, each one line. */
  messages: string[];
}

export type RepairMode = "none" | "leaks" | "all";

/** Format-specific facts for GetVolume. */
export interface FormatDetails {
  qcow2?: {
    version: 2 | 3;
    compat: "0.10" | "1.1";
    clusterSize: number;
    refcountBits: number;
    lazyRefcounts: boolean;
    dirty: boolean;
    corrupt: boolean;
    extendedL2: boolean;
    backingFile?: string;
    backingFormat?: string;
    snapshots: number;
  };
  vmdk?: {
    subformat: "monolithicSparse" | "streamOptimized";
    grainSize: number;
    cid: number;
    parentCid: number;
  };
}
