import type { IoOptions } from "../types.js";

/**
 * What the host file system can do for one open file. Probed once per file; an unsupported call fails
 * with UNSUPPORTED and is reported here — never silently emulated (glibc's posix_fallocate emulation is
 * the cautionary tale).
 */
export interface HostCapabilities {
  /** fallocate(2) mode 0 / FALLOC_FL_KEEP_SIZE. */
  allocate: boolean;
  /** FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE. */
  punchHole: boolean;
  /** FALLOC_FL_ZERO_RANGE. */
  zeroRange: boolean;
  /** lseek SEEK_DATA / SEEK_HOLE. Without it every byte is reported as data. */
  seekData: boolean;
  /** Open file description (OFD) byte-range locks, as QEMU uses for image locking. */
  ofdLocks: boolean;
}

/** QEMU's lock byte layout (block/file-posix.c): 100+perm = "I use perm", 200+perm = "I don't share perm". */
export type LockMode = "shared" | "exclusive";

/**
 * The one module through which the engine touches a host file. Positioned I/O only; all offsets and
 * lengths are byte counts ≤ 2^53. Implementations: the real Linux file (Node fs + FFI for the calls Node
 * lacks) and an in-memory file for tests and fault injection.
 */
export interface HostFile {
  readonly readOnly: boolean;
  readonly capabilities: HostCapabilities;

  /** Current file length (st_size). */
  size(): Promise<number>;
  /** Bytes the file occupies on the host (st_blocks × 512). */
  allocatedBytes(): Promise<number>;

  /** Reads up to `length` bytes at `offset`; returns fewer only at end of file. */
  read(offset: number, into: Uint8Array, opts?: IoOptions): Promise<number>;
  /** Reads exactly `into.length` bytes; bytes past end of file read as zeros. */
  readFull(offset: number, into: Uint8Array, opts?: IoOptions): Promise<void>;
  /** Writes all of `data` at `offset` (extending the file if needed). */
  write(offset: number, data: Uint8Array, opts?: IoOptions): Promise<void>;
  /** Writes several buffers back to back starting at `offset`, in one request where possible. */
  writev(offset: number, buffers: readonly Uint8Array[], opts?: IoOptions): Promise<void>;

  truncate(size: number): Promise<void>;
  /** fdatasync. A failure is permanent for the file: later calls fail with FSYNC_FAILED too. */
  flush(opts?: IoOptions): Promise<void>;

  /** fallocate mode 0 (extends the file) or KEEP_SIZE. UNSUPPORTED if the host can't. */
  allocate(offset: number, length: number, keepSize?: boolean): Promise<void>;
  /** Deallocates the range; it reads as zeros afterwards. UNSUPPORTED if the host can't. */
  punchHole(offset: number, length: number): Promise<void>;
  /** Makes the range read as zeros, keeping it allocated. UNSUPPORTED if the host can't. */
  zeroRange(offset: number, length: number, keepSize?: boolean): Promise<void>;
  /**
   * Optional: writes zero bytes over the range as real, allocated, written blocks (preallocation
   * "full"; unlike zeroRange, never unwritten extents), possibly bypassing the page cache. Durable
   * only after flush(). Callers without it write zero buffers.
   */
  fillZeros?(offset: number, length: number, opts?: IoOptions): Promise<void>;

  /**
   * Next offset ≥ `offset` holding data (SEEK_DATA), or null if none before end of file.
   * Without seekData capability returns `offset` (everything is data) below EOF.
   */
  seekData(offset: number): Promise<number | null>;
  /** Next hole ≥ `offset` (SEEK_HOLE); end of file counts as a hole. */
  seekHole(offset: number): Promise<number>;

  /**
   * Takes QEMU-compatible image locks for the permissions used (read, or read+write) and refuses with
   * FAILED_PRECONDITION (reason IMAGE_LOCKED) when another process's locks conflict. No-op without OFD locks.
   */
  lockImage(mode: LockMode): Promise<void>;
  unlockImage(): Promise<void>;

  close(): Promise<void>;
}
