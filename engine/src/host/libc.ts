import { constants as osConstants } from "node:os";
import * as koffi from "koffi";
import { EngineError } from "../errors.js";

/**
 * The few Linux calls Node's fs lacks (fallocate, lseek SEEK_DATA/SEEK_HOLE, OFD locks, preadv2
 * RWF_NOWAIT), called through
 * koffi. Failures become Errors with a Node-style string `code` ("ENOSPC") so EngineError.from maps them
 * like any fs error. off_t is 64-bit on every 64-bit Linux ABI, hence int64_t.
 */

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** preadv2 flag: fail with EAGAIN instead of waiting for the disk (only page-cache hits are served). */
const RWF_NOWAIT = 0x08;

export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

export const F_OFD_GETLK = 36;
export const F_OFD_SETLK = 37;
export const F_RDLCK = 0;
export const F_WRLCK = 1;
export const F_UNLCK = 2;
const SEEK_SET = 0;

export interface FlockRecord {
  l_type: number;
  l_whence: number;
  l_start: number;
  l_len: number;
  l_pid: number;
}

type NativeFunction = ReturnType<koffi.LibraryHandle["func"]>;

interface Bindings {
  fallocate: NativeFunction;
  lseek: NativeFunction;
  fcntlLock: NativeFunction;
  mmap: NativeFunction;
  pwrite: NativeFunction;
  /** Absent when libc lacks it (glibc < 2.26): cached reads are then reported unsupported. */
  preadv2: NativeFunction | undefined;
}

let bindings: Bindings | undefined;

/** Loaded on first use so that importing the engine (or using only the memory file) needs no libc. */
function libc(): Bindings {
  if (bindings === undefined) {
    if (process.platform !== "linux") {
      throw Object.assign(new Error("host file calls need Linux"), { code: "ENOSYS" });
    }
    let lib: koffi.LibraryHandle;
    try {
      lib = koffi.load("libc.so.6");
    } catch (err) {
      throw new EngineError("INTERNAL", "cannot load libc for host file calls", {
        reason: "HOST_FFI_UNAVAILABLE",
        cause: err,
      });
    }
    // x86_64/aarch64 layout: short, short, (pad), off_t, off_t, pid_t, (pad) = 32 bytes.
    const flock = koffi.struct("vdisk_flock", {
      l_type: "short",
      l_whence: "short",
      l_start: "int64_t",
      l_len: "int64_t",
      l_pid: "int",
    });
    bindings = {
      fallocate: lib.func("int fallocate(int fd, int mode, int64_t offset, int64_t len)"),
      lseek: lib.func("int64_t lseek(int fd, int64_t offset, int whence)"),
      // fcntl is variadic in C; for integer/pointer arguments the fixed-argument call is ABI-identical on
      // the Linux 64-bit ABIs, and a fixed prototype lets koffi copy the struct back (_Inout_).
      fcntlLock: lib.func("fcntl", "int", ["int", "int", koffi.inout(koffi.pointer(flock))]),
      mmap: lib.func("void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)"),
      pwrite: lib.func("int64_t pwrite(int fd, const void *buf, size_t count, int64_t offset)"),
      preadv2: optionalFunc(() =>
        lib.func("preadv2", "intptr_t", [
          "int",
          koffi.pointer(koffi.struct("vdisk_iovec", { base: "void *", len: "size_t" })),
          "int",
          "int64_t",
          "int",
        ]),
      ),
    };
  }
  return bindings;
}

function optionalFunc(bind: () => NativeFunction): NativeFunction | undefined {
  try {
    return bind();
  } catch {
    return undefined;
  }
}

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(osConstants.errno)) {
  // Aliases share a number (ENOTSUP/EOPNOTSUPP); either name maps to the same engine code.
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

/** An Error shaped like Node's fs errors, so EngineError.from and callers can test `code`. */
export function errnoError(errno: number, syscall: string): NodeJS.ErrnoException {
  const code = errnoNames.get(errno) ?? "EIO";
  const err: NodeJS.ErrnoException = new Error(`${syscall} failed: ${code}`);
  err.code = code;
  err.errno = -errno;
  err.syscall = syscall;
  return err;
}

export function isUnsupportedErrno(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "EOPNOTSUPP" || code === "ENOTSUP" || code === "ENOSYS";
}

/** Blocking fallocate; only for tiny probe calls. */
export function fallocateSync(fd: number, mode: number, offset: number, length: number): void {
  const rc = libc().fallocate(fd, mode, offset, length) as number;
  if (rc !== 0) throw errnoError(koffi.errno(), "fallocate");
}

/** fallocate on a koffi worker thread: allocating or zeroing gigabytes must not stall the event loop. */
export function fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
  const fn = libc().fallocate;
  return new Promise((resolve, reject) => {
    fn.async(fd, mode, offset, length, (err: unknown, rc: number) => {
      if (err) reject(err);
      // koffi hands the worker thread's errno to the completion callback.
      else if (rc !== 0) reject(errnoError(koffi.errno(), "fallocate"));
      else resolve();
    });
  });
}

/**
 * preadv2(RWF_NOWAIT) on the calling thread: a page-cache hit costs a few microseconds here, where a
 * read through the libuv threadpool costs tens. Returns the bytes read (fewer at end of file or when only
 * part is cached), "miss" when the data is not cached, "unsupported" when the kernel or file system
 * cannot do non-blocking buffered reads.
 */
export function readCachedSync(
  fd: number,
  into: Uint8Array,
  offset: number,
): number | "miss" | "unsupported" {
  const preadv2 = libc().preadv2;
  if (!preadv2) return "unsupported";
  const rc = Number(preadv2(fd, { base: into, len: into.length }, 1, offset, RWF_NOWAIT));
  if (rc >= 0) return rc;
  const errno = koffi.errno();
  return errno === osConstants.errno.EAGAIN ? "miss" : "unsupported";
}

/**
 * lseek with SEEK_DATA / SEEK_HOLE. Returns null on ENXIO (no data at or after `offset`, or offset at or
 * past end of file). These calls only read extent metadata, so they stay synchronous.
 */
export function seek(fd: number, offset: number, whence: typeof SEEK_DATA | typeof SEEK_HOLE): number | null {
  const result = libc().lseek(fd, offset, whence) as number | bigint;
  const position = Number(result);
  if (position < 0) {
    const errno = koffi.errno();
    if (errno === osConstants.errno.ENXIO) return null;
    throw errnoError(errno, "lseek");
  }
  return position;
}

/** F_OFD_SETLK (non-blocking) on one byte range. type F_RDLCK/F_WRLCK/F_UNLCK. */
export function ofdSetLock(fd: number, type: number, start: number, length: number): void {
  const record: FlockRecord = { l_type: type, l_whence: SEEK_SET, l_start: start, l_len: length, l_pid: 0 };
  const rc = libc().fcntlLock(fd, F_OFD_SETLK, record) as number;
  if (rc !== 0) throw errnoError(koffi.errno(), "fcntl(F_OFD_SETLK)");
}

/**
 * F_OFD_GETLK: would a lock of `type` on the range conflict with another open file description's lock?
 * Returns the conflicting lock's type, or F_UNLCK when there is none. Locks of our own description never
 * conflict with themselves.
 */
export function ofdTestLock(fd: number, type: number, start: number, length: number): number {
  // OFD GETLK requires l_pid = 0 on input.
  const record: FlockRecord = { l_type: type, l_whence: SEEK_SET, l_start: start, l_len: length, l_pid: 0 };
  const rc = libc().fcntlLock(fd, F_OFD_GETLK, record) as number;
  if (rc !== 0) throw errnoError(koffi.errno(), "fcntl(F_OFD_GETLK)");
  return record.l_type;
}

/**
 * True when `bytes` starts at a multiple of `alignment` in memory (O_DIRECT needs aligned user buffers).
 * false when the address cannot be known.
 */
export function isMemoryAligned(bytes: Uint8Array, alignment: number): boolean {
  try {
    return koffi.address(bytes) % BigInt(alignment) === 0n;
  } catch {
    return false;
  }
}

/**
 * A Buffer of `size` bytes starting at a multiple of `alignment` in memory, carved out of a slightly larger
 * Node buffer (Node's own allocations are only 16-byte aligned). Plainly allocated when the address cannot
 * be known: callers then copy through a bounce buffer or write without O_DIRECT.
 */
export function allocAlignedBuffer(size: number, alignment: number): Buffer {
  const backing = Buffer.allocUnsafeSlow(size + alignment);
  let address: bigint;
  try {
    address = koffi.address(backing);
  } catch {
    return backing.subarray(0, size);
  }
  const skip = Number((BigInt(alignment) - (address % BigInt(alignment))) % BigInt(alignment));
  return backing.subarray(skip, skip + size);
}

/** Bytes of the shared zero region used as the source of O_DIRECT zero writes. */
export const DIRECT_ZERO_BYTES = 8 * 1024 * 1024;
const PROT_READ = 0x1;
const MAP_PRIVATE = 0x02;
const MAP_ANONYMOUS = 0x20;
/** (void *) -1, as koffi reports the address (unsigned or signed, depending on the version). */
const MAP_FAILED = [-1n, 0xffff_ffff_ffff_ffffn];

let directZeros: unknown;

/**
 * A read-only, page-aligned anonymous mapping of DIRECT_ZERO_BYTES zeros, mapped once per process:
 * O_DIRECT needs aligned memory, which Node Buffers do not guarantee.
 */
function directZeroRegion(): unknown {
  if (directZeros === undefined) {
    const region = libc().mmap(null, DIRECT_ZERO_BYTES, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region === null || MAP_FAILED.includes(BigInt(koffi.address(region))))
      throw errnoError(koffi.errno(), "mmap");
    directZeros = region;
  }
  return directZeros;
}

/**
 * pwrite of `length` (≤ DIRECT_ZERO_BYTES) zero bytes from the aligned zero region, on a koffi worker
 * thread; resolves with the bytes written (short writes are possible).
 */
export function pwriteZeros(fd: number, offset: number, length: number): Promise<number> {
  if (length > DIRECT_ZERO_BYTES) throw new RangeError("zero write larger than the zero region");
  const fn = libc().pwrite;
  const region = directZeroRegion();
  return new Promise((resolve, reject) => {
    fn.async(fd, region, length, offset, (err: unknown, rc: number | bigint) => {
      const written = Number(rc);
      if (err) reject(err);
      else if (written < 0) reject(errnoError(koffi.errno(), "pwrite"));
      else resolve(written);
    });
  });
}
