import type { BlockImage } from "../block-image.js";
import { discardAt, flushImage, readAt, truncateImage, writeAt, writeZeroesAt } from "../core/index.js";
import { EngineError } from "../errors.js";
import { below, rng } from "./random.js";

/**
 * Seeded workloads and the "nothing lost" oracle of reliability.md §c, per 512-byte sector:
 * an acknowledged sector (its last write completed and a flush completed after it) must read back
 * exactly; a sector written since the last flush — or by an operation that failed — may read as its
 * acknowledged content or as any value written to it since (no third value, no bytes from elsewhere).
 */

export const SECTOR = 512;

export type Op =
  | { kind: "write"; offset: number; length: number; tag: number }
  | { kind: "zero"; offset: number; length: number; mayUnmap: boolean }
  | { kind: "discard"; offset: number; length: number }
  | { kind: "flush" }
  | { kind: "grow"; size: number };

export interface WorkloadShape {
  /** Virtual size at the start. */
  size: number;
  clusterSize: number;
  ops: number;
  /** Guest bytes covered by one L2 table (qcow2) or grain table (vmdk): runs crossing it are favoured. */
  tableCoverage: number;
  discard: boolean;
  zero: boolean;
  /** Grow by this much once, somewhere in the workload (0: never). */
  growBy: number;
}

/** A reproducible op list: sector-aligned writes of 1 sector .. 3 clusters, many crossing cluster or table edges. */
export function makeWorkload(seed: number, shape: WorkloadShape): Op[] {
  const random = rng(seed);
  const ops: Op[] = [];
  let size = shape.size;
  const growAt = shape.growBy > 0 ? below(random, shape.ops) : -1;
  const sectors = () => size / SECTOR;
  const range = (maxBytes: number): { offset: number; length: number } => {
    let offset: number;
    const r = random();
    if (r < 0.3) {
      // Around a table boundary, so the run spans two tables.
      const edges = Math.max(1, Math.floor(size / shape.tableCoverage));
      offset = (1 + below(random, edges)) * shape.tableCoverage - (1 + below(random, 8)) * SECTOR;
    } else if (r < 0.5) {
      offset =
        below(random, Math.max(1, size / shape.clusterSize)) * shape.clusterSize + below(random, 4) * SECTOR;
    } else {
      offset = below(random, sectors()) * SECTOR;
    }
    offset = Math.max(0, Math.min(offset, size - SECTOR));
    const length = Math.min(size - offset, (1 + below(random, maxBytes / SECTOR)) * SECTOR);
    return { offset, length };
  };
  for (let i = 0; i < shape.ops; i++) {
    if (i === growAt) {
      size += shape.growBy;
      ops.push({ kind: "grow", size });
      continue;
    }
    const r = random();
    if (r < 0.55) ops.push({ kind: "write", ...range(3 * shape.clusterSize), tag: 1 + below(random, 254) });
    else if (r < 0.67 && shape.zero)
      ops.push({ kind: "zero", ...range(4 * shape.clusterSize), mayUnmap: random() < 0.5 });
    else if (r < 0.77 && shape.discard) ops.push({ kind: "discard", ...range(4 * shape.clusterSize) });
    else ops.push({ kind: "flush" });
  }
  return ops;
}

/** The bytes a write op carries: never all zero, different for each op and offset. */
export function opData(op: { offset: number; length: number; tag: number }): Uint8Array {
  const data = new Uint8Array(op.length);
  for (let i = 0; i < data.length; i++)
    data[i] = ((op.offset + i) * 7 + op.tag * 13 + (i >> 9)) & 255 || op.tag;
  return data;
}

interface SectorState {
  /** Content as of the last flush that settled it (undefined: zeros). */
  acked: Uint8Array | undefined;
  /** Values written since (or by failed operations); the sector may read as any of them. */
  maybe: Uint8Array[];
  /** Value of the last completed write. */
  last: Uint8Array | undefined;
  /** The last operation touching it failed: its content stays uncertain until a later write completes. */
  failed: boolean;
}

const ZERO_SECTOR = new Uint8Array(SECTOR);

export class SectorOracle {
  private readonly sectors = new Map<number, SectorState>();
  private readonly inFlight = new Set<number>();
  ackedSize: number;
  /** Sizes the image may have after a crash (acknowledged or issued since). */
  possibleSizes = new Set<number>();

  constructor(size: number) {
    this.ackedSize = size;
    this.possibleSizes.add(size);
  }

  private state(sector: number): SectorState {
    let s = this.sectors.get(sector);
    if (!s) {
      s = { acked: undefined, maybe: [], last: undefined, failed: false };
      this.sectors.set(sector, s);
    }
    return s;
  }

  /** Records that an operation is about to change [offset, offset+data.length) (data: undefined = zeros). */
  begin(offset: number, length: number, data: Uint8Array | undefined): void {
    this.inFlight.clear();
    for (let at = offset; at < offset + length; at += SECTOR) {
      const s = this.state(at / SECTOR);
      const value = data ? data.subarray(at - offset, at - offset + SECTOR) : ZERO_SECTOR;
      s.maybe.push(value);
      this.inFlight.add(at / SECTOR);
    }
  }

  beginGrow(size: number): void {
    this.inFlight.clear();
    this.possibleSizes.add(size);
  }

  /** The operation begun last completed. */
  complete(): void {
    for (const sector of this.inFlight) {
      const s = this.state(sector);
      s.last = s.maybe.at(-1);
      s.failed = false;
    }
    this.inFlight.clear();
  }

  /** The operation begun last failed: its sectors stay uncertain. */
  fail(): void {
    for (const sector of this.inFlight) this.state(sector).failed = true;
    this.inFlight.clear();
  }

  /** A flush completed: everything completed before it is acknowledged. */
  flushed(currentSize: number): void {
    for (const s of this.sectors.values()) {
      if (s.failed || s.maybe.length === 0) continue;
      s.acked = s.last;
      s.maybe = [];
    }
    this.ackedSize = currentSize;
    this.possibleSizes = new Set([currentSize]);
  }

  /** Problems found comparing the image against the oracle (empty = nothing lost). */
  verify(img: BlockImage, maxProblems = 5): Promise<string[]> {
    return this.verifyReader(img.virtualSize, (offset, length) => readAt(img, offset, length), maxProblems);
  }

  /** verify() for an image read some other way (e.g. through the server's ReadVolume). */
  async verifyReader(
    virtualSize: number,
    read: (offset: number, length: number) => Promise<Uint8Array>,
    maxProblems = 5,
  ): Promise<string[]> {
    const problems: string[] = [];
    if (!this.possibleSizes.has(virtualSize) && virtualSize !== this.ackedSize) {
      problems.push(`virtual size ${virtualSize} not in {${[...this.possibleSizes].join(", ")}}`);
    }
    const size = Math.min(virtualSize, Math.max(...this.possibleSizes));
    const chunk = 256 * 1024;
    for (let base = 0; base < size && problems.length < maxProblems; base += chunk) {
      const n = Math.min(chunk, size - base);
      const got = await read(base, n);
      for (let at = 0; at < n && problems.length < maxProblems; at += SECTOR) {
        const sector = (base + at) / SECTOR;
        const actual = got.subarray(at, at + SECTOR);
        const s = this.sectors.get(sector);
        const acked = s?.acked ?? ZERO_SECTOR;
        if (equal(actual, acked)) continue;
        if (s?.maybe.some((v) => equal(actual, v))) continue;
        problems.push(
          `sector ${sector} (offset ${base + at}) reads a value never acknowledged nor written there` +
            ` (first bytes ${hex(actual)}; acknowledged ${hex(acked)}; ${s?.maybe.length ?? 0} in-flight values)`,
        );
      }
    }
    return problems;
  }
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.subarray(0, 8)).toString("hex");
}

export interface RunResult {
  /** Ops that completed. */
  completed: number;
  errors: Array<{ op: number; kind: Op["kind"]; error: EngineError }>;
}

/**
 * Runs `ops` against the image, keeping the oracle in step. `stopOnError`: stop at the first failure
 * (a crash or a dead disk); otherwise failures are recorded and the workload goes on.
 */
export async function runWorkload(
  img: BlockImage,
  ops: readonly Op[],
  oracle: SectorOracle,
  opts: { stopOnError: boolean },
): Promise<RunResult> {
  const result: RunResult = { completed: 0, errors: [] };
  for (const [i, op] of ops.entries()) {
    try {
      await runOp(img, op, oracle);
      // Discard is advisory: the range may keep its data or read as zeros.
      if (op.kind === "discard") oracle.fail();
      else oracle.complete();
      if (op.kind === "flush") oracle.flushed(img.virtualSize);
      result.completed++;
    } catch (err) {
      if (!(err instanceof EngineError)) throw err;
      oracle.fail();
      result.errors.push({ op: i, kind: op.kind, error: err });
      if (opts.stopOnError) break;
    }
  }
  return result;
}

async function runOp(img: BlockImage, op: Op, oracle: SectorOracle): Promise<void> {
  switch (op.kind) {
    case "write": {
      if (op.offset + op.length > img.virtualSize) return;
      const data = opData(op);
      oracle.begin(op.offset, op.length, data);
      return writeAt(img, op.offset, data);
    }
    case "zero":
      if (op.offset + op.length > img.virtualSize) return;
      oracle.begin(op.offset, op.length, undefined);
      return writeZeroesAt(img, op.offset, op.length, { mayUnmap: op.mayUnmap });
    case "discard":
      if (op.offset + op.length > img.virtualSize) return;
      // A discarded range reads as zeros afterwards (no backing) — or keeps its data if the driver ignores it.
      oracle.begin(op.offset, op.length, undefined);
      await discardAt(img, op.offset, op.length);
      return;
    case "flush":
      oracle.begin(0, 0, undefined);
      return flushImage(img);
    case "grow":
      oracle.beginGrow(op.size);
      return truncateImage(img, op.size, { prealloc: "off" });
  }
}
