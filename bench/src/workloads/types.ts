import type { VdiskClient } from "@vdisk/sdk";

/** Who ran: the qemu peer, vdisk through its server (gRPC), or the vdisk engine called in-process. */
export type Side = "peer" | "server" | "engine";

/** What one timed run measured. */
export interface Sample {
  seconds: number;
  /** Peak RSS of the process doing the work (peer: the command; server: the server; engine: this process). */
  peakRssBytes?: number | undefined;
  /** Progress events seen (job events over gRPC, onProgress calls in the engine). */
  progressEvents?: number;
}

export interface Contestant {
  side: Side;
  /** What exactly runs, e.g. the peer command line or the RPC. */
  label: string;
  /** Set when this side cannot run yet (e.g. the server does not serve the operation); nothing is faked. */
  unavailable?: string;
  /** Untimed preparation before each run (remove outputs, create an empty target). */
  before?(): Promise<void>;
  /** The run; times its own critical section (so untimed set-up inside it stays out). */
  run(): Promise<Sample>;
  /** Untimed correctness gate after the first run (e.g. qemu-img compare of the output with the source). */
  check?(): Promise<void>;
  /** Untimed clean-up after each run. */
  after?(): Promise<void>;
}

export interface BenchContext {
  scale: number;
  /** Scratch directory for peer files and engine-only images (same file system as the pool). */
  workDir: string;
  /** The server's pool directory. */
  poolDir: string;
  client: VdiskClient;
  serverPid: number;
  log(message: string): void;
}

export interface PreparedWorkload {
  contestants: Contestant[];
  /** Bytes of guest data the workload moves, for throughput (omitted where throughput means nothing). */
  bytes?: number;
  /** Operations per run, for rates (e.g. 4 KiB writes). */
  operations?: number;
  /** Parameters actually used (after scaling), recorded in the results. */
  parameters: Record<string, string | number>;
  teardown?(): Promise<void>;
}

export interface Workload {
  name: string;
  title: string;
  /** The peer command, in words, for the report. */
  peer: string;
  prepare(ctx: BenchContext): Promise<PreparedWorkload>;
}
