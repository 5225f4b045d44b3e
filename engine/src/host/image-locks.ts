import { EngineError } from "../errors.js";
import type { LockMode } from "./host-file.js";
import { F_RDLCK, F_UNLCK, F_WRLCK, ofdSetLock, ofdTestLock } from "./libc.js";

/**
 * QEMU-compatible image locking (block/file-posix.c). Every process with the image open takes shared
 * (F_RDLCK) OFD locks on single bytes: 100+perm for each permission it uses, 200+perm for each permission
 * it refuses to share. A conflict is another process holding 200+perm for a perm we use, or 100+perm for a
 * perm we refuse to share. Read locks never conflict with read locks, so the test is F_OFD_GETLK with a
 * F_WRLCK probe, exactly as QEMU's raw_check_lock_bytes does.
 */

const LOCK_PERM_BASE = 100;
const LOCK_SHARED_BASE = 200;

/** QEMU's BlockPermission bit numbers (include/block/block-common.h). GRAPH_MOD (bit 4) is gone since 6.2. */
const PERMISSIONS = [
  { bit: 0, name: "consistent read" },
  { bit: 1, name: "write" },
  { bit: 2, name: "write unchanged" },
  { bit: 3, name: "resize" },
] as const;
type PermissionBit = (typeof PERMISSIONS)[number]["bit"];

const CONSISTENT_READ: PermissionBit = 0;
const WRITE: PermissionBit = 1;
const RESIZE: PermissionBit = 3;

interface LockPlan {
  used: readonly PermissionBit[];
  unshared: readonly PermissionBit[];
}

/**
 * Mirrors what QEMU 7.2 holds on a qcow2 image (observed in /proc/locks):
 * exclusive = a writer (qemu-system / qemu-io on a rw image): uses consistent read, write and resize and
 *   refuses to share write and resize (bytes 100, 101, 103, 201, 203). Readers that tolerate change
 *   (`qemu-img info -U`, force-share) still get in; QEMU writers and plain readers do not.
 * shared = a plain reader (`qemu-img info` without -U, `qemu-io -r`): uses consistent read and refuses
 *   writers and resizers, because its view of the metadata must not change underneath it (100, 201, 203).
 * WRITE_UNCHANGED is never claimed: QEMU's writers don't either, and claiming it would only make us
 * conflict with a process that refuses to share it.
 */
const PLANS: Record<LockMode, LockPlan> = {
  exclusive: { used: [CONSISTENT_READ, WRITE, RESIZE], unshared: [WRITE, RESIZE] },
  shared: { used: [CONSISTENT_READ], unshared: [WRITE, RESIZE] },
};

function lockBytes(plan: LockPlan): Set<number> {
  return new Set([
    ...plan.used.map((p) => LOCK_PERM_BASE + p),
    ...plan.unshared.map((p) => LOCK_SHARED_BASE + p),
  ]);
}

const ALL_LOCK_BYTES = PERMISSIONS.flatMap((p) => [LOCK_PERM_BASE + p.bit, LOCK_SHARED_BASE + p.bit]);

function permissionName(bit: PermissionBit): string {
  return PERMISSIONS[bit].name;
}

function imageLocked(message: string, byte: number): EngineError {
  return new EngineError("FAILED_PRECONDITION", "volume is in use by another process (image locked)", {
    reason: "IMAGE_LOCKED",
    metadata: { conflict: message, lockByte: String(byte) },
  });
}

/** Sets our lock bytes to exactly `mode`'s set (or none), without testing for conflicts. */
function setLockBytes(fd: number, mode: LockMode | null): void {
  const wanted = mode === null ? new Set<number>() : lockBytes(PLANS[mode]);
  for (const byte of ALL_LOCK_BYTES) {
    try {
      ofdSetLock(fd, wanted.has(byte) ? F_RDLCK : F_UNLCK, byte, 1);
    } catch (err) {
      // Someone holds a write lock on the byte: only possible if another tool locks exclusively.
      const code = (err as { code?: unknown }).code;
      if (code === "EAGAIN" || code === "EACCES")
        throw imageLocked(`byte ${byte} is locked exclusively`, byte);
      throw EngineError.from(err);
    }
  }
}

/** Returns a description of the first conflict with another open file description, or null. */
function findConflict(fd: number, plan: LockPlan): { message: string; byte: number } | null {
  for (const perm of plan.used) {
    const byte = LOCK_SHARED_BASE + perm;
    if (ofdTestLock(fd, F_WRLCK, byte, 1) !== F_UNLCK) {
      return { message: `another process does not share "${permissionName(perm)}"`, byte };
    }
  }
  for (const perm of plan.unshared) {
    const byte = LOCK_PERM_BASE + perm;
    if (ofdTestLock(fd, F_WRLCK, byte, 1) !== F_UNLCK) {
      return { message: `another process holds "${permissionName(perm)}"`, byte };
    }
  }
  return null;
}

/**
 * Moves the file's locks from `current` to `next`. Like QEMU, locks are applied first and checked after:
 * two processes racing both see each other and both back off, rather than both succeeding. On conflict
 * the previous state is restored and IMAGE_LOCKED is thrown.
 */
export function changeImageLock(fd: number, current: LockMode | null, next: LockMode): void {
  try {
    setLockBytes(fd, next);
    const conflict = findConflict(fd, PLANS[next]);
    if (conflict !== null) throw imageLocked(conflict.message, conflict.byte);
  } catch (err) {
    try {
      setLockBytes(fd, current);
    } catch {
      // Restoring can only fail the way taking failed; the original error is the one to report.
    }
    throw EngineError.from(err);
  }
}

export function releaseImageLock(fd: number): void {
  try {
    setLockBytes(fd, null);
  } catch (err) {
    throw EngineError.from(err);
  }
}
