import type { HostFile } from "./host/host-file.js";
import type {
  CheckResult,
  FormatDetails,
  FormatName,
  IoOptions,
  LayerStatus,
  Limits,
  PreallocMode,
  ProgressFn,
  RepairMode,
  ZeroOptions,
} from "./types.js";

/**
 * An opened image layer (QEMU's BlockDriverState). Drivers implement format logic only; the core
 * (core/io.ts) validates ranges, splits to limits.maxTransfer, emulates what a driver lacks and walks
 * backing chains. Servers and jobs call the core, never these methods directly.
 *
 * Contract for every method: offsets/lengths are validated by the core (inside [0, virtualSize],
 * lengths > 0, ≤ maxTransfer); `opts.signal` is checked at safe points only — never between writing
 * new metadata and switching the pointer to it.
 */
export interface BlockImage {
  readonly format: FormatName;
  /** Guest-visible size in bytes. Changes after truncate. */
  readonly virtualSize: number;
  readonly readOnly: boolean;
  readonly limits: Limits;
  /** The backing layer this image reads through, supplied at open by the caller; never opened from a path in the image. */
  readonly backing: BlockImage | undefined;

  /**
   * Reads `into.length` bytes at `offset`. Runs this layer does not allocate are read from `backing`
   * (zeros past a short backing's end, or without backing). Read and blockStatus share one lookup.
   */
  read(offset: number, into: Uint8Array, opts?: IoOptions): Promise<void>;
  /** Writes `data` at `offset` into this layer (copy-on-write of partial clusters from backing). */
  write(offset: number, data: Uint8Array, opts?: IoOptions): Promise<void>;
  /**
   * Makes the range read as zeros without writing zero buffers where the format allows it. May throw
   * UNSUPPORTED for (parts of) ranges it cannot handle natively; the core then writes zeros unless
   * `noFallback`. With a backing layer underneath, zeroed runs must not fall through to it.
   */
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void>;
  /** Frees the range where possible. Afterwards it reads as zeros (never as backing data). Advisory: may do nothing. */
  discard(offset: number, length: number, opts?: IoOptions): Promise<void>;
  /** Status of the run starting at `offset`, answering for THIS layer only (see LayerStatus). */
  blockStatus(offset: number, length: number, opts?: IoOptions): Promise<LayerStatus>;
  /**
   * Resizes to `newSize`. Growing preallocates the new area per `prealloc`; shrinking requires
   * prealloc "off" and frees what lies past the end.
   */
  truncate(newSize: number, opts: TruncateOptions): Promise<void>;
  /** Writes back caches in crash-safe order and fdatasyncs. */
  flush(opts?: IoOptions): Promise<void>;
  /** Consistency check (and repair). Formats without metadata report zero findings. */
  check(opts: { repair: RepairMode; signal?: AbortSignal }): Promise<CheckResult>;
  /**
   * Replaces the backing link recorded in the image header in one atomic header update (flatten,
   * rebase). `link` undefined drops it. The caller guarantees content does not change by doing so.
   */
  setBackingLink(link: BackingLink | undefined, backing: BlockImage | undefined): Promise<void>;
  /** Format facts for GetVolume. */
  details(): FormatDetails;
  /** Host bytes used by this layer's file (st_blocks × 512). */
  physicalBytes(): Promise<number>;
  /** Flushes and releases the host file. Does not close the backing image (the caller owns it). */
  close(): Promise<void>;
}

/** How an overlay names its backing in its header: the pool file name (relative) and format, for QEMU. */
export interface BackingLink {
  fileName: string;
  format: FormatName;
}

export interface TruncateOptions {
  prealloc: PreallocMode;
  signal?: AbortSignal;
  onProgress?: ProgressFn;
}

export interface Qcow2CreateOptions {
  /** "0.10" = v2, "1.1" = v3 (default). */
  compat?: "0.10" | "1.1";
  lazyRefcounts?: boolean;
  /** 1, 2, 4, 8, 16 (default), 32 or 64. */
  refcountBits?: number;
  extendedL2?: boolean;
}

export interface VmdkCreateOptions {
  subformat?: "monolithicSparse" | "streamOptimized";
  adapterType?: "ide" | "lsilogic" | "buslogic" | "legacyESX";
  zeroedGrain?: boolean;
}

export interface CreateOptions {
  /** Virtual size in bytes. */
  size: number;
  prealloc: PreallocMode;
  /** qcow2: 512 B – 2 MiB, power of two (default 64 KiB). vmdk: grain size (default 64 KiB). */
  clusterSize?: number;
  /** Allocate only the first N bytes up front (libvirt allocation); the rest stays thin. Default: all of it. */
  preallocBytes?: number;
  backing?: { image: BlockImage; link: BackingLink };
  qcow2?: Qcow2CreateOptions;
  vmdk?: VmdkCreateOptions;
  signal?: AbortSignal;
  onProgress?: ProgressFn;
}

export interface OpenOptions {
  readOnly: boolean;
  /** The backing layer, resolved by the caller from its catalog. Required when the header names one. */
  backing?: BlockImage;
  /** Open even though the header names a backing file and none was supplied (inspection, check). */
  allowMissingBacking?: boolean;
}

export interface BlockDriver {
  readonly format: FormatName;
  /** 0..100 confidence from the first bytes of a file. Pure; no I/O. Used only for uploads. */
  probe(head: Uint8Array): number;
  /** Writes a new image into an empty host file. */
  create(file: HostFile, opts: CreateOptions): Promise<void>;
  open(file: HostFile, opts: OpenOptions): Promise<BlockImage>;
}
