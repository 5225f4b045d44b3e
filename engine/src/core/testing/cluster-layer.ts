import type { BackingLink, BlockImage, TruncateOptions } from "../../block-image.js";
import { EngineError } from "../../errors.js";
import type { CheckResult, FormatDetails, IoOptions, LayerStatus, Limits, ZeroOptions } from "../../types.js";

/**
 * Test-only in-memory layer shaped like a qcow2 image: one state per cluster and an optional backing.
 * It answers block status for itself only, so chains of these exercise the core's walk, and it records
 * every driver call so tests can see how the core split and emulated requests.
 */
export type ClusterState = "unallocated" | "data" | "zero" | "compressed";

export interface ClusterLayerOptions {
  clusterSize: number;
  /** One entry per cluster; the virtual size is clusters × clusterSize unless `virtualSize` says otherwise. */
  clusters: ClusterState[];
  virtualSize?: number;
  backing?: BlockImage;
  readOnly?: boolean;
  limits?: Partial<Limits>;
  /** writeZeroes throws UNSUPPORTED (the core must fall back). */
  zeroUnsupported?: boolean;
  /** Report host offsets (cluster index × clusterSize + a base) for data clusters. */
  hostOffsetBase?: number;
}

export interface RecordedCall {
  op: "read" | "write" | "writeZeroes" | "discard" | "blockStatus" | "flush" | "truncate";
  offset: number;
  length: number;
  mayUnmap?: boolean;
}

export class ClusterLayer implements BlockImage {
  readonly format = "qcow2" as const;
  readonly readOnly: boolean;
  readonly limits: Limits;
  readonly backing: BlockImage | undefined;
  readonly clusterSize: number;
  readonly clusters: ClusterState[];
  readonly calls: RecordedCall[] = [];
  private size: number;
  private readonly bytes: Buffer;
  private readonly zeroUnsupported: boolean;
  private readonly hostOffsetBase: number | undefined;

  constructor(opts: ClusterLayerOptions) {
    this.clusterSize = opts.clusterSize;
    this.clusters = [...opts.clusters];
    this.size = opts.virtualSize ?? opts.clusters.length * opts.clusterSize;
    this.backing = opts.backing;
    this.readOnly = opts.readOnly ?? false;
    this.limits = {
      requestAlignment: 1,
      maxTransfer: 1024 * 1024,
      zeroAlignment: opts.clusterSize,
      discardAlignment: opts.clusterSize,
      ...opts.limits,
    };
    this.zeroUnsupported = opts.zeroUnsupported ?? false;
    this.hostOffsetBase = opts.hostOffsetBase;
    this.bytes = Buffer.alloc(opts.clusters.length * opts.clusterSize);
  }

  get virtualSize(): number {
    return this.size;
  }

  /** Fills a cluster's stored bytes (its state becomes "data"). */
  fill(cluster: number, byte: number): void {
    this.bytes.fill(byte, cluster * this.clusterSize, (cluster + 1) * this.clusterSize);
    this.clusters[cluster] = "data";
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    this.calls.push({ op: "read", offset, length: into.length });
    for (let pos = 0; pos < into.length; ) {
      const cluster = Math.floor((offset + pos) / this.clusterSize);
      const runEnd = Math.min(into.length, (cluster + 1) * this.clusterSize - offset);
      const target = into.subarray(pos, runEnd);
      const state = this.clusters[cluster];
      if (state === "data" || state === "compressed")
        target.set(this.bytes.subarray(offset + pos, offset + runEnd));
      else if (state === "unallocated" && this.backing !== undefined)
        await this.readBacking(offset + pos, target);
      else target.fill(0);
      pos = runEnd;
    }
  }

  private async readBacking(offset: number, into: Uint8Array): Promise<void> {
    const backing = this.backing as BlockImage;
    into.fill(0);
    const available = Math.max(0, Math.min(into.length, backing.virtualSize - offset));
    if (available > 0) await backing.read(offset, into.subarray(0, available));
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.calls.push({ op: "write", offset, length: data.length });
    this.bytes.set(data, offset);
    for (let c = Math.floor(offset / this.clusterSize); c * this.clusterSize < offset + data.length; c++) {
      this.clusters[c] = "data";
    }
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.calls.push({ op: "writeZeroes", offset, length, mayUnmap: opts?.mayUnmap === true });
    if (this.zeroUnsupported || offset % this.clusterSize !== 0 || length % this.clusterSize !== 0) {
      throw new EngineError("UNSUPPORTED", "zeroes must cover whole clusters");
    }
    this.bytes.fill(0, offset, offset + length);
    for (let c = offset / this.clusterSize; c < (offset + length) / this.clusterSize; c++)
      this.clusters[c] = "zero";
  }

  async discard(offset: number, length: number): Promise<void> {
    this.calls.push({ op: "discard", offset, length });
    if (offset % this.clusterSize !== 0 || length % this.clusterSize !== 0) return;
    this.bytes.fill(0, offset, offset + length);
    for (let c = offset / this.clusterSize; c < (offset + length) / this.clusterSize; c++)
      this.clusters[c] = "zero";
  }

  async blockStatus(offset: number, length: number): Promise<LayerStatus> {
    this.calls.push({ op: "blockStatus", offset, length });
    const first = Math.floor(offset / this.clusterSize);
    const state = this.clusters[first] ?? "unallocated";
    let last = first;
    while (last + 1 < this.clusters.length && this.clusters[last + 1] === state) last++;
    // Deliberately longer than asked (a hint, like QEMU's pnum): the core must clamp.
    const runLength = (last + 1) * this.clusterSize - offset;
    const status: LayerStatus = {
      length: runLength,
      allocated: state !== "unallocated",
      data: state === "data" || state === "compressed",
      zero: state === "zero",
    };
    if (state === "compressed") status.compressed = true;
    if (state === "data" && this.hostOffsetBase !== undefined)
      status.hostOffset = this.hostOffsetBase + offset;
    return status;
  }

  async truncate(newSize: number, _opts: TruncateOptions): Promise<void> {
    this.calls.push({ op: "truncate", offset: newSize, length: 0 });
    this.size = newSize;
  }

  async flush(_opts?: IoOptions): Promise<void> {
    this.calls.push({ op: "flush", offset: 0, length: 0 });
  }

  async check(): Promise<CheckResult> {
    return { corruptions: 0, leaks: 0, corruptionsFixed: 0, leaksFixed: 0, checkErrors: 0, messages: [] };
  }

  async setBackingLink(_link: BackingLink | undefined, _backing: BlockImage | undefined): Promise<void> {
    throw new EngineError("UNSUPPORTED", "test layer has no header");
  }

  details(): FormatDetails {
    return {};
  }

  async physicalBytes(): Promise<number> {
    return this.clusters.filter((c) => c === "data" || c === "compressed").length * this.clusterSize;
  }

  async close(): Promise<void> {}

  callsOf(op: RecordedCall["op"]): RecordedCall[] {
    return this.calls.filter((c) => c.op === op);
  }
}
