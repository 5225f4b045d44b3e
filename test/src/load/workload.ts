import { setTimeout as sleep } from "node:timers/promises";
import { KiB, MiB, type VdiskClient, VdiskError } from "@vdisk/sdk";
import { Tally } from "./stats.js";

/**
 * The rejections the server documents for load (docs/operations.md "Load"): admission of data streams
 * (TOO_MANY_STREAMS), admission of jobs (TOO_MANY_JOBS), and a job and data streams refusing each other
 * a volume (VOLUME_BUSY). Each reason must come with its status code; anything else is a failure.
 */
export const ADMISSION_REJECTIONS: Readonly<Record<string, string>> = {
  TOO_MANY_STREAMS: "resource_exhausted",
  TOO_MANY_JOBS: "resource_exhausted",
  VOLUME_BUSY: "failed_precondition",
};

export type StreamKind = "read" | "write" | "map" | "check";

export interface WorkloadPlan {
  /** Volumes the regular streams pick from at random, one per operation. */
  volumes: readonly string[];
  /**
   * Reads and writes land in the first `dataRegionBytes` of a volume (where the data is), so the pool's disk
   * use stays bounded; allocation maps cover the whole volume.
   */
  dataRegionBytes: number;
  /** How many streams of each kind run at once (each loops: one operation after another). */
  streams: Readonly<Record<StreamKind, number>>;
  /** Connections each kind's streams are spread over (the server allows 128 streams per connection). */
  clients: Readonly<Record<StreamKind, readonly VdiskClient[]>>;
  durationMs: number;
}

export interface UnexpectedError {
  kind: string;
  volume: string;
  code: string;
  reason: string | undefined;
  message: string;
}

export interface WorkloadResult {
  ops: Tally;
  bytes: Tally;
  rejections: Tally;
  /** Operations cut short by the end of the run, by kind (not errors). */
  cancelledAtEnd: Tally;
  unexpected: UnexpectedError[];
  /** Operations that had not settled FINISH_GRACE_MS after being cancelled (a hang), by kind. */
  stuck: Tally;
}

const READ_BYTES = 4 * MiB;
const READ_CHUNK = 1 * MiB;
const WRITE_PIECES = 4;
const WRITE_PIECE_BYTES = 256 * KiB;
const WRITE_ALIGN = 4 * KiB;
/** A rejected stream retries after a jittered pause, as a well-behaved client backs off. */
const BACKOFF_MS = { min: 20, max: 80 };
const MAX_UNEXPECTED_KEPT = 50;
const FINISH_GRACE_MS = 20_000;

/** Random but deterministic enough to be readable in a hexdump: 1 MiB of a repeating 251-byte cycle. */
const PATTERN = (() => {
  const bytes = new Uint8Array(MiB + WRITE_PIECE_BYTES);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i % 251) + 1;
  return bytes;
})();

function randomInt(below: number): number {
  return Math.floor(Math.random() * below);
}

function pick<T>(items: readonly T[]): T {
  return items[randomInt(items.length)] as T;
}

/** The documented rejection an error is (as "CODE/REASON"), or undefined when it is not one. */
export function admissionRejection(err: unknown): string | undefined {
  if (!(err instanceof VdiskError) || err.reason === undefined) return undefined;
  const expectedCode = ADMISSION_REJECTIONS[err.reason];
  if (expectedCode === undefined || expectedCode !== err.code) return undefined;
  return `${err.code.toUpperCase()}/${err.reason}`;
}

function describe(kind: string, volume: string, err: unknown): UnexpectedError {
  if (err instanceof VdiskError)
    return { kind, volume, code: err.code, reason: err.reason, message: err.message };
  return { kind, volume, code: "client", reason: undefined, message: String(err) };
}

/** One operation of a kind on one volume; returns the bytes it moved (data bytes only). */
async function runOnce(
  kind: StreamKind,
  client: VdiskClient,
  volume: string,
  plan: WorkloadPlan,
  signal: AbortSignal,
): Promise<number> {
  switch (kind) {
    case "read": {
      const offset = randomInt((plan.dataRegionBytes - READ_BYTES) / MiB + 1) * MiB;
      let bytes = 0;
      const pieces = client.readVolume(volume, { offset, length: READ_BYTES, chunkSize: READ_CHUNK, signal });
      for await (const piece of pieces) if ("data" in piece) bytes += piece.data.length;
      return bytes;
    }
    case "write": {
      const pieces = Array.from({ length: WRITE_PIECES }, () => {
        const offset = randomInt((plan.dataRegionBytes - WRITE_PIECE_BYTES) / WRITE_ALIGN + 1) * WRITE_ALIGN;
        const from = randomInt(MiB);
        return { offset, data: PATTERN.subarray(from, from + WRITE_PIECE_BYTES) };
      });
      const result = await client.writeVolume(volume, pieces, { signal });
      return result.writtenBytes;
    }
    case "map": {
      const map = await client.getAllocationMap(volume, { signal }).collect();
      if (map.extents.length === 0) throw new Error(`empty allocation map of ${volume}`);
      return 0;
    }
    case "check": {
      await client.checkVolume(volume, { signal }).result;
      return 0;
    }
  }
}

/**
 * Runs every stream for the plan's duration: each one loops over operations of its kind on random volumes,
 * backing off after a documented rejection and recording anything else. At the end the operations still
 * running are cancelled (a loaded 2-core machine may take long to finish 200 of them); a call that does not
 * settle within FINISH_GRACE_MS of its cancellation counts as stuck.
 */
export async function runWorkload(plan: WorkloadPlan): Promise<WorkloadResult> {
  const result: WorkloadResult = {
    ops: new Tally(),
    bytes: new Tally(),
    rejections: new Tally(),
    cancelledAtEnd: new Tally(),
    unexpected: [],
    stuck: new Tally(),
  };
  const inFlight = new Tally();
  const stop = new AbortController();
  let unexpectedCount = 0;
  const loops: Promise<void>[] = [];
  for (const kind of Object.keys(plan.streams) as StreamKind[]) {
    const pool = plan.clients[kind];
    for (let i = 0; i < plan.streams[kind]; i++) {
      const client = pool[i % pool.length] as VdiskClient;
      loops.push(
        (async () => {
          // Staggered start: 200 streams opening in the same tick measure the connection setup, not the server.
          await sleep(randomInt(500));
          while (!stop.signal.aborted) {
            const volume = pick(plan.volumes);
            inFlight.add(kind);
            try {
              const bytes = await runOnce(kind, client, volume, plan, stop.signal);
              result.ops.add(kind);
              result.bytes.add(kind, bytes);
            } catch (err) {
              const rejection = admissionRejection(err);
              if (rejection !== undefined) result.rejections.add(rejection);
              else if (stop.signal.aborted && err instanceof VdiskError && err.code === "canceled")
                result.cancelledAtEnd.add(kind);
              else {
                unexpectedCount++;
                if (result.unexpected.length < MAX_UNEXPECTED_KEPT)
                  result.unexpected.push(describe(kind, volume, err));
              }
              await sleep(BACKOFF_MS.min + randomInt(BACKOFF_MS.max - BACKOFF_MS.min));
            } finally {
              inFlight.add(kind, -1);
            }
          }
        })(),
      );
    }
  }
  await sleep(plan.durationMs);
  stop.abort();
  const graceEnd = sleep(FINISH_GRACE_MS, "timeout" as const);
  const outcome = await Promise.race([Promise.all(loops).then(() => "done" as const), graceEnd]);
  if (outcome === "timeout")
    for (const [kind, n] of Object.entries(inFlight.toJSON())) if (n > 0) result.stuck.add(kind, n);
  if (unexpectedCount > result.unexpected.length)
    result.unexpected.push({
      kind: "…",
      volume: "",
      code: "",
      reason: undefined,
      message: `${unexpectedCount - result.unexpected.length} more unexpected errors not kept`,
    });
  return result;
}

export interface SlowReaderResult {
  bytes: number;
  pieces: number;
  error: UnexpectedError | undefined;
}

/**
 * A consumer that reads one piece per second of a stream that could go much faster: the server must stop
 * producing when HTTP/2 flow control stops it (write() → 'drain'), not buffer the volume in memory.
 */
export async function slowReader(
  client: VdiskClient,
  volume: string,
  signal: AbortSignal,
): Promise<SlowReaderResult> {
  const out: SlowReaderResult = { bytes: 0, pieces: 0, error: undefined };
  try {
    for await (const piece of client.readVolume(volume, { sparse: false, chunkSize: MiB, signal })) {
      if ("data" in piece) out.bytes += piece.data.length;
      out.pieces++;
      await sleep(1000, undefined, { signal });
    }
    out.error = {
      kind: "slow-read",
      volume,
      code: "client",
      reason: undefined,
      message: "stream ended early",
    };
  } catch (err) {
    if (!signal.aborted) out.error = describe("slow-read", volume, err);
  }
  return out;
}

/**
 * GetVolume at a steady pace on its own connection; returns each call's latency in ms. A call that hits the
 * client's deadline is a latency measurement too (at least the deadline), not a server error: it is counted
 * in `timedOut` and its elapsed time kept, so the percentiles show it.
 */
export async function probeGetVolume(
  client: VdiskClient,
  volumes: readonly string[],
  intervalMs: number,
  signal: AbortSignal,
): Promise<{ latenciesMs: number[]; timedOut: number; errors: UnexpectedError[] }> {
  const latenciesMs: number[] = [];
  const errors: UnexpectedError[] = [];
  let timedOut = 0;
  while (!signal.aborted) {
    const volume = pick(volumes);
    const started = performance.now();
    try {
      await client.getVolume(volume);
      latenciesMs.push(performance.now() - started);
    } catch (err) {
      if (err instanceof VdiskError && err.code === "deadline_exceeded") {
        timedOut++;
        latenciesMs.push(performance.now() - started);
      } else if (errors.length < MAX_UNEXPECTED_KEPT) errors.push(describe("getVolume", volume, err));
    }
    await sleep(intervalMs, undefined, { signal }).catch(() => undefined);
  }
  return { latenciesMs, timedOut, errors };
}
