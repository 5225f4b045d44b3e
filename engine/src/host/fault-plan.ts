import { EngineError } from "../errors.js";
import { fsyncFailedError } from "./checks.js";

/**
 * Injected I/O errors the way QEMU's blkdebug and SQLite's test VFS inject them (reliability.md T4): by
 * named write point or by the nth matching call, once or from then on. One plan serves every HostFile
 * that injects faults — the in-memory file and the decorator over any real file — so both fail alike.
 */

/** Which calls a fault matches. "write" is every call that changes the file (write, writev, truncate, fallocate modes). */
export type FaultOp = "write" | "flush" | "read" | "any";

export type InjectedErrno = "EIO" | "ENOSPC";

export interface FaultSpec {
  op: FaultOp;
  /** The nth matching call after injection fails (1-based, default 1). */
  nth?: number;
  error: InjectedErrno;
  /** Fail the nth matching call and every one after it (a dead disk, a full disk), not just the nth. */
  persistent?: boolean;
  /**
   * Only calls the driver named with this write point match (IoOptions.point; a flush without a name is
   * "flush", truncate and fallocate calls have no name). "l1_grow" also matches "l1_grow.write_table".
   */
  point?: string;
  /** Only calls touching this range match (truncate passes the changed range, flush passes 0, 0). */
  when?: (offset: number, length: number) => boolean;
}

/** A fault's point matches the call's point itself and its dotted refinements ("l1_grow" ⊇ "l1_grow.write_table"). */
export function pointMatches(wanted: string, actual: string | undefined): boolean {
  return actual !== undefined && (actual === wanted || actual.startsWith(`${wanted}.`));
}

interface ArmedFault {
  spec: FaultSpec;
  matched: number;
}

export class FaultPlan {
  private faults: ArmedFault[] = [];
  private fsyncFailure: EngineError | undefined;
  /** Faults that fired since the plan was made (clearing faults keeps the count). */
  faultsFired = 0;

  inject(fault: FaultSpec): void {
    const nth = fault.nth ?? 1;
    if (!Number.isInteger(nth) || nth < 1) throw new RangeError("fault nth must be a positive integer");
    this.faults.push({ spec: fault, matched: 0 });
  }

  /**
   * Disarms every fault. A flush that already failed stays failed: the HostFile contract makes an fsync
   * failure permanent, and clearing a fault does not bring lost page-cache contents back.
   */
  clear(): void {
    this.faults = [];
  }

  /** The failure every later write and flush must report once a flush failed. */
  get deadHandle(): EngineError | undefined {
    return this.fsyncFailure;
  }

  /** Throws the injected error if a fault matches this call; counts the call against every matching fault. */
  fire(op: "read" | "write" | "flush", offset: number, length: number, point?: string): void {
    for (const fault of this.faults) {
      const { spec } = fault;
      if (spec.op !== op && spec.op !== "any") continue;
      if (spec.point !== undefined && !pointMatches(spec.point, point)) continue;
      if (spec.when && !spec.when(offset, length)) continue;
      fault.matched++;
      const nth = spec.nth ?? 1;
      if (fault.matched === nth || (spec.persistent && fault.matched > nth)) {
        if (!spec.persistent) this.faults = this.faults.filter((f) => f !== fault);
        this.faultsFired++;
        const err: NodeJS.ErrnoException = new Error(`injected ${spec.error} on ${op}`);
        err.code = spec.error;
        throw EngineError.from(err);
      }
    }
  }

  /**
   * The checks of a flush: a handle whose fsync failed fails again; an injected flush fault fails it
   * for good with FSYNC_FAILED, as the real file does after fdatasync(2) fails.
   */
  fireFlush(point: string): void {
    if (this.fsyncFailure) throw this.fsyncFailure;
    try {
      this.fire("flush", 0, 0, point);
    } catch (err) {
      this.fsyncFailure = fsyncFailedError(err);
      throw this.fsyncFailure;
    }
  }
}
