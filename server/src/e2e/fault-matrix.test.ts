import { spawnSync } from "node:child_process";
import path from "node:path";
import { type ServiceError, status } from "@grpc/grpc-js";
import { driverFor, type EngineErrorCode, openHostFile, qcow2Driver } from "@vdisk/engine";
import {
  type FaultSpec,
  type FaultyFile,
  makeWorkload,
  type Op,
  opData,
  SectorOracle,
  withFaults,
} from "@vdisk/engine/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfo } from "../gen/google/rpc/error_details.js";
import { Preallocation, VolumeFormat } from "../gen/vdisk/v1/common.js";
import type { WriteVolumeRequest } from "../gen/vdisk/v1/data.js";
import { type JobEvent, JobState } from "../gen/vdisk/v1/job.js";
import { RepairMode } from "../gen/vdisk/v1/volume.js";
import { Qcow2Compat, VolumeState } from "../gen/vdisk/v1/volume_types.js";
import { ENGINE_CODE_TO_STATUS, errorInfoOf } from "../rpc/errors.js";
import { call, collect, createVolume, type Harness, healthClient, startHarness } from "./harness.js";

/**
 * Issue 7 done-when 1 through the server (reliability.md T4, "nothing lost" of §c): every named qcow2
 * write point × {EIO, ENOSPC} × {once, persistent}, injected under the real pool file of a volume
 * (withFaults over the node HostFile) while RPCs drive a seeded workload. The RPC that meets the fault
 * fails with the status errors.ts maps its code to; then, with the fault cleared:
 *
 * - a write fault (EIO or ENOSPC on a pwrite): the volume stays READY and serves again — the engine keeps
 *   no state the disk lacks — so a flush succeeds, CheckVolume finds leaks at most, qemu-img check -U on
 *   the pool file exits 0 or 3, and ReadVolume returns every acknowledged byte;
 * - an fsync fault: the volume is ERROR for good (DATA_LOSS, health NOT_SERVING, I/O refused), and the
 *   pool file, opened read-only by the engine and by qemu-img, still holds every byte acknowledged
 *   before the failed fsync, with leaks at most.
 *
 * One server, one volume per case. Acknowledged = a WriteVolume that returned OK (each ends with a flush)
 * or anything completed before such a flush; failed and unflushed ranges may read old or new (§c.4).
 */

const QCOW2_POINTS = [
  "data_write",
  "cow_write",
  "l2_alloc",
  "l2_update",
  "l1_update",
  "refblock_alloc",
  "refblock_update",
  "reftable_update",
  "reftable_grow",
  "l1_grow",
  "header_update",
  "flush",
] as const;
type Errno = "EIO" | "ENOSPC";

const SIZE = 8 << 20;
/** 512-byte clusters and 64-bit refcounts: a refcount block covers 32 KiB, the first refcount table 2 MiB. */
function clusterSizeFor(point: string): number {
  return point === "cow_write" ? 4096 : 512; // copy-on-write needs writes smaller than a cluster
}

function workloadFor(point: string, seed: number): Op[] {
  const clusterSize = clusterSizeFor(point);
  const ops = makeWorkload(seed, {
    size: SIZE,
    clusterSize,
    ops: 24,
    tableCoverage: (clusterSize / 8) * clusterSize,
    discard: true,
    zero: true,
    growBy: 1 << 20,
  });
  // A large early write allocates refcount blocks; for reftable growth it pushes the file past the 2 MiB
  // the first refcount table covers. A discard then rewrites entries of an L2 table already on disk.
  const bulk = point === "reftable_grow" ? 5 << 19 : 256 << 10;
  ops.splice(
    2,
    0,
    { kind: "write", offset: 0, length: bulk, tag: 201 },
    { kind: "discard", offset: 4096, length: 4096 },
  );
  return ops;
}

let h: Harness;

/**
 * The faults of one pool file, kept across the handles the server opens on it (it reopens an image after
 * a write error): a persistent fault is the disk's, so a new handle meets it from its first matching call
 * until the test clears it; a one-shot fault fires once in all.
 */
class FaultyDisk {
  readonly handles: FaultyFile[] = [];
  private cleared = false;
  constructor(private readonly spec: FaultSpec | undefined) {}

  opened(file: FaultyFile): void {
    this.handles.push(file);
    if (this.spec === undefined || this.cleared) return;
    if (this.handles.length === 1) file.injectFault(this.spec);
    else if (this.spec.persistent && this.fired > 0) file.injectFault({ ...this.spec, nth: 1 });
  }

  get fired(): number {
    return this.handles.reduce((n, f) => n + f.faultsFired, 0);
  }

  /** Calls per write point over every handle. */
  get points(): Record<string, number> {
    const all: Record<string, number> = {};
    for (const f of this.handles) for (const [p, n] of Object.entries(f.points)) all[p] = (all[p] ?? 0) + n;
    return all;
  }

  clear(): void {
    this.cleared = true;
    for (const f of this.handles) f.clearFaults();
  }
}
const disks = new Map<string, FaultyDisk>();

beforeAll(async () => {
  const qemu = spawnSync("qemu-img", ["--version"]);
  if (qemu.status !== 0) throw new Error("qemu-img is not installed: the fault matrix needs it (qemu-utils)");
  h = await startHarness({
    engine: {
      driverFor,
      openHostFile: async (filePath, opts) => {
        const file = withFaults(await openHostFile(filePath, opts));
        if (opts.create === undefined) {
          let disk = disks.get(filePath);
          if (disk === undefined) {
            disk = new FaultyDisk(undefined);
            disks.set(filePath, disk);
          }
          disk.opened(file);
        }
        return file;
      },
    },
  });
});
afterAll(async () => {
  await h?.stop();
});

function poolFile(name: string): string {
  return path.join(h.pool, `${name}.qcow2`);
}

async function createQcow2(name: string, clusterSize: number): Promise<void> {
  const events = await createVolume(h, name, {
    format: VolumeFormat.VOLUME_FORMAT_QCOW2,
    capacityBytes: BigInt(SIZE),
    clusterSize,
    qcow2: { compat: Qcow2Compat.QCOW2_COMPAT_V3, lazyRefcounts: false, refcountBits: 64, extendedL2: false },
  });
  expect(events.at(-1)?.job?.state, JSON.stringify(events.at(-1)?.job?.error)).toBe(
    JobState.JOB_STATE_SUCCEEDED,
  );
}

/** What one RPC ended with: OK, or its gRPC code and ErrorInfo reason (a failed job counts as its error). */
type Outcome = { ok: true } | { ok: false; code: number; reason: string };

async function outcomeOf(promise: Promise<unknown>): Promise<Outcome> {
  try {
    await promise;
    return { ok: true };
  } catch (err) {
    const e = err as ServiceError;
    const [bin] = e.metadata?.get("grpc-status-details-bin") ?? [];
    const info = bin instanceof Buffer ? errorInfoOf(bin).info : undefined;
    return { ok: false, code: e.code, reason: info?.reason ?? "" };
  }
}

async function jobOutcome(events: Promise<JobEvent[]>): Promise<Outcome> {
  const first = await outcomeOf(events);
  if (!first.ok) return first;
  const job = (await events).at(-1)?.job;
  if (job?.state === JobState.JOB_STATE_SUCCEEDED) return { ok: true };
  // A failed job is not a failed call: its google.rpc.Status travels in the terminal event.
  const detail = job?.error?.details.find((d) => d.typeUrl.endsWith("/google.rpc.ErrorInfo"));
  const reason = detail === undefined ? "" : ErrorInfo.decode(detail.value).reason;
  return { ok: false, code: job?.error?.code ?? -1, reason };
}

function writeStream(messages: WriteVolumeRequest[]): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const stream = h.data.writeVolume((err, res) => (err ? reject(err) : resolve(res)));
    for (const m of messages) stream.write(m);
    stream.end();
  });
}

const open = (name: string): WriteVolumeRequest => ({
  payload: { $case: "open", open: { name, zeroDetection: 0 } },
});

/** Runs one workload op as RPCs, keeping the oracle in step (every WriteVolume ends with a flush). */
async function runOp(name: string, op: Op, oracle: SectorOracle, size: { now: number }): Promise<Outcome> {
  switch (op.kind) {
    case "write": {
      if (op.offset + op.length > size.now) return { ok: true };
      const data = opData(op);
      oracle.begin(op.offset, op.length, data);
      const r = await outcomeOf(
        writeStream([
          open(name),
          { payload: { $case: "chunk", chunk: { offset: BigInt(op.offset), data: Buffer.from(data) } } },
        ]),
      );
      if (r.ok) {
        oracle.complete();
        oracle.flushed(size.now);
      } else oracle.fail();
      return r;
    }
    case "zero":
    case "discard": {
      if (op.offset + op.length > size.now) return { ok: true };
      oracle.begin(op.offset, op.length, undefined);
      const req = { name, offset: BigInt(op.offset), length: BigInt(op.length), requestId: "" };
      const r = await outcomeOf(
        op.kind === "zero"
          ? call(h.allocation, h.allocation.writeZeroes, { ...req, mayUnmap: op.mayUnmap })
          : call(h.allocation, h.allocation.discard, req),
      );
      // Discard is advisory: the range may keep its data or read as zeros.
      if (r.ok && op.kind === "zero") oracle.complete();
      else oracle.fail();
      return r;
    }
    case "flush": {
      oracle.begin(0, 0, undefined);
      const r = await outcomeOf(writeStream([open(name)]));
      if (r.ok) oracle.flushed(size.now);
      return r;
    }
    case "grow": {
      oracle.beginGrow(op.size);
      const r = await jobOutcome(
        collect(
          h.volumes.resizeVolume({
            name,
            capacityBytes: BigInt(op.size),
            allowShrink: false,
            preallocation: Preallocation.PREALLOCATION_OFF,
            requestId: "",
            cancelOnDisconnect: false,
          }),
        ),
      );
      if (r.ok) size.now = op.size;
      return r;
    }
  }
}

async function runWorkload(name: string, ops: Op[], oracle: SectorOracle): Promise<Outcome[]> {
  const size = { now: SIZE };
  const failures: Outcome[] = [];
  for (const op of ops) {
    const r = await runOp(name, op, oracle, size);
    if (!r.ok) failures.push(r);
  }
  return failures;
}

async function readVolume(name: string, offset: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  const messages = await collect(
    h.data.readVolume({ name, offset: BigInt(offset), length: BigInt(length), chunkSize: 0, sparse: false }),
  );
  for (const m of messages) {
    if (m.payload?.$case === "chunk") out.set(m.payload.chunk.data, Number(m.payload.chunk.offset) - offset);
  }
  return out;
}

function qemuImgCheck(file: string): { code: number; output: string } {
  const r = spawnSync("qemu-img", ["check", "-U", "-f", "qcow2", file], { encoding: "utf8" });
  return { code: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

const hitsByPoint = new Map<string, Promise<Record<string, number>>>();
/** How often the fault-free workload reaches each write point on a volume of its own. */
function hitsFor(point: string, seed: number): Promise<Record<string, number>> {
  const key = `${clusterSizeFor(point)}/${seed}/${point === "reftable_grow"}`;
  let hits = hitsByPoint.get(key);
  if (hits === undefined) {
    const name = `probe-${hitsByPoint.size}`;
    hits = (async () => {
      await createQcow2(name, clusterSizeFor(point));
      const failures = await runWorkload(name, workloadFor(point, seed), new SectorOracle(SIZE));
      expect(failures).toEqual([]);
      return disks.get(poolFile(name))?.points ?? {};
    })();
    hitsByPoint.set(key, hits);
  }
  return hits;
}

function hitsOf(hits: Record<string, number>, point: string): number {
  let n = 0;
  for (const [name, count] of Object.entries(hits))
    if (name === point || name.startsWith(`${point}.`)) n += count;
  return n;
}

const ENGINE_CODE: Record<Errno, EngineErrorCode> = { EIO: "IO", ENOSPC: "NO_SPACE" };
// The table in errors.ts is the contract; these are what it says today (DESIGN §2 Errors).
expect(ENGINE_CODE_TO_STATUS.NO_SPACE).toBe(status.RESOURCE_EXHAUSTED);
expect(ENGINE_CODE_TO_STATUS.IO).toBe(status.INTERNAL);
let volumes = 0;

async function runCase(point: string, error: Errno, persistent: boolean, seed: number): Promise<void> {
  const hits = hitsOf(await hitsFor(point, seed), point);
  expect(hits, `the workload never reaches write point ${point}`).toBeGreaterThan(0);
  const nth = 1 + ((seed * 7919 + point.length * 31) % hits);
  const name = `fm-${volumes++}`;
  const where = `${point} ${error} ${persistent ? "persistent" : "once"} (nth ${nth} of ${hits}, ${name})`;
  // Armed before the volume exists: whatever opens its pool file first (creation reports the volume) gets it.
  const disk = new FaultyDisk({ op: "any", point, nth, error, persistent });
  disks.set(poolFile(name), disk);
  await createQcow2(name, clusterSizeFor(point));
  const oracle = new SectorOracle(SIZE);
  const failures = await runWorkload(name, workloadFor(point, seed), oracle);
  expect(disk.fired, where).toBeGreaterThan(0);

  // The RPC that met the fault failed with the mapped status and the host errno as its reason.
  const fsync = point === "flush";
  const expected = fsync
    ? { ok: false, code: status.DATA_LOSS, reason: "HOST_FSYNC_FAILED" }
    : { ok: false, code: ENGINE_CODE_TO_STATUS[ENGINE_CODE[error]], reason: `HOST_${error}` };
  expect(failures[0], where).toEqual(expected);
  disk.clear();

  const { volume } = await call(h.volumes, h.volumes.getVolume, { name });
  if (fsync) {
    await expectDeadVolume(name, where, volume?.state);
    await verifyPoolFileOffline(name, oracle, where);
    return;
  }
  expect(volume?.state, where).toBe(VolumeState.VOLUME_STATE_READY);
  const health = await healthClient(h);
  expect(await health.check(`vdisk.v1.Volume/${name}`), where).toBe("SERVING");
  health.close();
  // Usable again once the fault is gone: a flush succeeds and makes everything written since durable.
  expect(await outcomeOf(writeStream([open(name)])), where).toEqual({ ok: true });
  oracle.flushed(Number(volume?.capacityBytes ?? SIZE));

  const check = await collect(
    h.volumes.checkVolume({
      name,
      repair: RepairMode.REPAIR_MODE_NONE,
      requestId: "",
      cancelOnDisconnect: false,
    }),
  );
  const job = check.at(-1)?.job;
  expect(job?.state, where).toBe(JobState.JOB_STATE_SUCCEEDED);
  const report = job?.result?.result?.$case === "check" ? job.result.result.check : undefined;
  expect(report?.corruptions, where).toBe(0n);
  expect(report?.checkErrors, where).toBe(0n);

  const q = qemuImgCheck(poolFile(name));
  expect([0, 3], `${where}\n${q.output}`).toContain(q.code);
  const capacity = Number(volume?.capacityBytes ?? SIZE);
  expect(await oracle.verifyReader(capacity, (o, l) => readVolume(name, o, l)), where).toEqual([]);
}

/** After a failed fsync: ERROR for good, NOT_SERVING in health, I/O refused even with the fault gone. */
async function expectDeadVolume(name: string, where: string, state: VolumeState | undefined): Promise<void> {
  expect(state, where).toBe(VolumeState.VOLUME_STATE_ERROR);
  const health = await healthClient(h);
  expect(await health.check(`vdisk.v1.Volume/${name}`), where).toBe("NOT_SERVING");
  health.close();
  expect(await outcomeOf(writeStream([open(name)])), where).toEqual({
    ok: false,
    code: status.FAILED_PRECONDITION,
    reason: "VOLUME_ERROR",
  });
}

/** The pool file of a dead volume, opened read-only: our check, qemu-img check, every acknowledged byte. */
async function verifyPoolFileOffline(name: string, oracle: SectorOracle, where: string): Promise<void> {
  const q = qemuImgCheck(poolFile(name));
  expect([0, 3], `${where}\n${q.output}`).toContain(q.code);
  const file = await openHostFile(poolFile(name), { readOnly: true });
  const image = await qcow2Driver.open(file, { readOnly: true });
  try {
    const result = await image.check({ repair: "none" });
    expect(result.corruptions, `${where}\n${result.messages.join("\n")}`).toBe(0);
    expect(await oracle.verify(image), where).toEqual([]);
  } finally {
    await image.close();
  }
}

describe("qcow2 fault matrix through the server (named write points × EIO/ENOSPC × once/persistent)", () => {
  for (const point of QCOW2_POINTS) {
    it(point, async () => {
      // The four cases use four volumes: run together, their fsyncs overlap instead of queueing.
      const cases = (["EIO", "ENOSPC"] as const).flatMap((error, i) =>
        [false, true].map((persistent, j) => runCase(point, error, persistent, 41 + 2 * i + j)),
      );
      await Promise.all(cases);
    });
  }
});
