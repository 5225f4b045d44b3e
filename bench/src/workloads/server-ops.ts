import { randomUUID } from "node:crypto";
import type { VdiskClient } from "@vdisk/sdk";
import { VdiskError } from "@vdisk/sdk";

// Wire enum values of vdisk.v1 (proto/vdisk/v1/common.proto, volume.proto, job.proto). The raw clients are
// used for job RPCs so every JobEvent on the wire is counted (the SDK's JobHandle coalesces snapshots).
const FORMAT = { raw: 1, qcow2: 2, vmdk: 3 } as const;
const PREALLOCATION = { off: 1, metadata: 2, falloc: 3, full: 4 } as const;
const CLONE_MODE_FULL = 2;
const JOB_STATE_SUCCEEDED = 3;

export type WireFormat = keyof typeof FORMAT;
export type WirePrealloc = keyof typeof PREALLOCATION;

/** Outcome of a job RPC followed to its end. */
export interface JobOutcome {
  events: number;
  /** Events whose progress advanced (done_bytes grew), the ones a progress bar would redraw on. */
  progressEvents: number;
}

async function followJob(events: AsyncIterable<{ job?: JobLike | undefined }>): Promise<JobOutcome> {
  let count = 0;
  let progressed = 0;
  let lastDone = -1n;
  let last: JobLike | undefined;
  for await (const event of events) {
    count++;
    last = event.job;
    const done = event.job?.progress?.doneBytes ?? 0n;
    if (done > lastDone) {
      progressed++;
      lastDone = done;
    }
  }
  if (last === undefined) throw new Error("job stream ended without events");
  if (last.state !== JOB_STATE_SUCCEEDED) {
    throw new Error(`job ended in state ${last.state}: ${last.error?.message ?? "no error message"}`);
  }
  return { events: count, progressEvents: progressed };
}

interface JobLike {
  state: number;
  progress?: { doneBytes: bigint } | undefined;
  error?: { message: string } | undefined;
}

export interface CreateSpec {
  name: string;
  format: WireFormat;
  capacityBytes: number;
  preallocation?: WirePrealloc;
}

/** CreateVolume, following the job stream to its end. */
export function createVolume(client: VdiskClient, spec: CreateSpec): Promise<JobOutcome> {
  return followJob(
    client.raw.volumes.createVolume({
      name: spec.name,
      format: FORMAT[spec.format],
      capacityBytes: BigInt(spec.capacityBytes),
      preallocation: PREALLOCATION[spec.preallocation ?? "off"],
      requestId: randomUUID(),
    }),
  );
}

/** CloneVolume FULL into `format`, following the job stream to its end. */
export function cloneVolumeFull(
  client: VdiskClient,
  source: string,
  name: string,
  format: WireFormat,
): Promise<JobOutcome> {
  return followJob(
    client.raw.volumes.cloneVolume({
      source,
      name,
      mode: CLONE_MODE_FULL,
      format: FORMAT[format],
      preallocation: PREALLOCATION.off,
      requestId: randomUUID(),
    }),
  );
}

export async function deleteVolumeIfExists(client: VdiskClient, name: string): Promise<void> {
  try {
    await client.deleteVolume(name);
  } catch (err) {
    if (err instanceof VdiskError && err.code === "not_found") return;
    throw err;
  }
}

/**
 * Tries a small instance of an operation. Returns undefined when the server serves it, or the reason it
 * does not ("n/a (not served yet): …") when it answers UNIMPLEMENTED; other errors propagate.
 */
export async function servedOrReason(probe: () => Promise<unknown>): Promise<string | undefined> {
  try {
    await probe();
    return undefined;
  } catch (err) {
    if (isUnimplemented(err)) return `n/a (not served yet): ${firstLine(err)}`;
    throw err;
  }
}

function isUnimplemented(err: unknown): boolean {
  if (err instanceof VdiskError) return err.code === "unimplemented";
  return err instanceof Error && /unimplemented|UNIMPLEMENTED/.test(err.message);
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split("\n")[0] ?? "";
}
