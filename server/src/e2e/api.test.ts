import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Preallocation, VolumeFormat, ZeroDetection } from "../gen/vdisk/v1/common.js";
import type { ReadVolumeRequest, WriteVolumeRequest, WriteVolumeResponse } from "../gen/vdisk/v1/data.js";
import { type JobEvent, JobKind, JobState } from "../gen/vdisk/v1/job.js";
import { CloneMode } from "../gen/vdisk/v1/volume.js";
import { Qcow2Compat, VmdkSubformat, VolumeState } from "../gen/vdisk/v1/volume_types.js";
import {
  call,
  collect,
  createRequest,
  createVolume,
  expectStatus,
  type Harness,
  healthClient,
  MAX_CAPACITY,
  startHarness,
} from "./harness.js";

const MIB = 1024 * 1024;
let h: Harness;

beforeAll(async () => {
  h = await startHarness();
});
afterAll(async () => {
  await h?.stop();
});

function read(req: Partial<ReadVolumeRequest> & { name: string }) {
  return collect(h.data.readVolume({ offset: 0n, length: 0n, chunkSize: 0, sparse: false, ...req }));
}

function write(messages: WriteVolumeRequest[]): Promise<WriteVolumeResponse> {
  return new Promise((resolve, reject) => {
    const stream = h.data.writeVolume((err, res) =>
      err ? reject(err) : resolve(res as WriteVolumeResponse),
    );
    for (const m of messages) stream.write(m);
    stream.end();
  });
}

const open = (name: string, zeroDetection = ZeroDetection.ZERO_DETECTION_OFF): WriteVolumeRequest => ({
  payload: { $case: "open", open: { name, zeroDetection } },
});
const chunk = (offset: number, data: Buffer): WriteVolumeRequest => ({
  payload: { $case: "chunk", chunk: { offset: BigInt(offset), data } },
});

describe("input validation", () => {
  it.each([
    ["empty", ""],
    ["too long", "a".repeat(129)],
    ["slash", "a/b"],
    ["dot-dot", "a..b"],
    ["leading dot", ".x"],
  ])("rejects a %s name with INVALID_ARGUMENT", async (_label, name) => {
    await expectStatus(createVolume(h, name), status.INVALID_ARGUMENT, "INVALID_VOLUME_NAME");
    await expectStatus(
      call(h.volumes, h.volumes.getVolume, { name }),
      status.INVALID_ARGUMENT,
      "INVALID_VOLUME_NAME",
    );
  });

  it("rejects capacity 0 and capacity above the limit", async () => {
    await expectStatus(
      createVolume(h, "cap0", { capacityBytes: 0n }),
      status.INVALID_ARGUMENT,
      "INVALID_CAPACITY",
    );
    await expectStatus(
      createVolume(h, "capbig", { capacityBytes: BigInt(MAX_CAPACITY) + 1n }),
      status.INVALID_ARGUMENT,
      "CAPACITY_ABOVE_LIMIT",
    );
    await expectStatus(
      createVolume(h, "cap2p60", { capacityBytes: 2n ** 60n }),
      status.OUT_OF_RANGE,
      "VALUE_TOO_LARGE",
    );
  });

  it("rejects a missing format and raw-only mistakes", async () => {
    await expectStatus(
      createVolume(h, "nofmt", { format: VolumeFormat.VOLUME_FORMAT_UNSPECIFIED }),
      status.INVALID_ARGUMENT,
      "INVALID_FORMAT",
    );
    await expectStatus(
      createVolume(h, "rawmeta", { preallocation: Preallocation.PREALLOCATION_METADATA }),
      status.INVALID_ARGUMENT,
      "INVALID_PREALLOCATION",
    );
    await expectStatus(
      createVolume(h, "rawback", { backingVolume: "base" }),
      status.INVALID_ARGUMENT,
      "BACKING_NOT_SUPPORTED",
    );
  });

  it("answers NOT_FOUND for unknown volumes and jobs", async () => {
    await expectStatus(
      call(h.volumes, h.volumes.getVolume, { name: "ghost" }),
      status.NOT_FOUND,
      "VOLUME_NOT_FOUND",
    );
    await expectStatus(
      call(h.volumes, h.volumes.deleteVolume, { name: "ghost", requestId: "" }),
      status.NOT_FOUND,
    );
    await expectStatus(read({ name: "ghost" }), status.NOT_FOUND);
    await expectStatus(write([open("ghost")]), status.NOT_FOUND);
    await expectStatus(call(h.jobs, h.jobs.getJob, { id: "job-nope" }), status.NOT_FOUND, "JOB_NOT_FOUND");
  });

  it("answers UNIMPLEMENTED with what is missing", async () => {
    // Resizing vmdk volumes is the one operation still missing (QEMU does not resize vmdk either).
    await createVolume(h, "unresizable", {
      format: VolumeFormat.VOLUME_FORMAT_VMDK,
      capacityBytes: 1048576n,
    });
    const err = await expectStatus(
      collect(
        h.volumes.resizeVolume({
          name: "unresizable",
          capacityBytes: 2097152n,
          allowShrink: false,
          preallocation: 0,
          requestId: "",
          cancelOnDisconnect: false,
        }),
      ),
      status.UNIMPLEMENTED,
      "NOT_IMPLEMENTED",
    );
    expect(err.details).toMatch(/^ResizeVolume for vmdk is not implemented yet \(/);
  });
});

describe("create, idempotency and delete", () => {
  it("creates a raw volume, streaming the job's start and terminal events", async () => {
    const events = await createVolume(h, "first", { labels: { env: "test" } });
    expect(events.length).toBeGreaterThanOrEqual(2);
    const ids = new Set(events.map((e) => e.job?.id));
    expect(ids.size).toBe(1);
    expect(events[0]?.job?.id).toMatch(/^job-/);
    const last = events[events.length - 1]?.job;
    expect(last?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    expect(last?.result?.result?.$case).toBe("volume");
    const { volume } = await call(h.volumes, h.volumes.getVolume, { name: "first" });
    expect(volume).toMatchObject({
      name: "first",
      capacityBytes: 1048576n,
      allocationBytes: 0n,
      state: VolumeState.VOLUME_STATE_READY,
      labels: { env: "test" },
    });
    expect(volume?.createTime).toBeInstanceOf(Date);
    expect(fs.existsSync(path.join(h.pool, "first.raw"))).toBe(true);
  });

  it("returns the same volume and job for a repeated create, and ALREADY_EXISTS for a different spec", async () => {
    const a = await createVolume(h, "twice");
    const b = await createVolume(h, "twice");
    expect(b[b.length - 1]?.job?.id).toBe(a[0]?.job?.id);
    expect(b[b.length - 1]?.job?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    const err = await expectStatus(
      createVolume(h, "twice", { capacityBytes: 2n * 1048576n }),
      status.ALREADY_EXISTS,
      "VOLUME_EXISTS",
    );
    expect(err.details).toContain("different specification");
  });

  it("returns the same job for the same request id", async () => {
    const a = await createVolume(h, "byreq", { requestId: "req-42" });
    const b = await createVolume(h, "byreq", { requestId: "req-42" });
    expect(b[0]?.job?.id).toBe(a[0]?.job?.id);
    await expectStatus(
      createVolume(h, "other", { requestId: "req-42" }),
      status.INVALID_ARGUMENT,
      "REQUEST_ID_REUSED",
    );
  });

  it("preallocates FULL and FALLOC, reporting allocation and physical bytes", async () => {
    for (const [name, preallocation] of [
      ["full", Preallocation.PREALLOCATION_FULL],
      ["falloc", Preallocation.PREALLOCATION_FALLOC],
    ] as const) {
      const events = await createVolume(h, name, { capacityBytes: BigInt(8 * MIB), preallocation });
      expect(events[events.length - 1]?.job?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
      const { volume } = await call(h.volumes, h.volumes.getVolume, { name });
      expect(volume?.physicalBytes).toBeGreaterThanOrEqual(BigInt(8 * MIB));
      // FULL writes zeros, which SEEK_DATA reports as data. fallocated (unwritten) extents read as holes
      // through SEEK_DATA on ext4 — qemu-img map says the same — so only physical bytes show FALLOC.
      if (preallocation === Preallocation.PREALLOCATION_FULL)
        expect(volume?.allocationBytes).toBe(BigInt(8 * MIB));
      expect(volume?.preallocation).toBe(preallocation);
    }
  });

  it("lists with paging and label filters", async () => {
    for (const n of ["ls-a", "ls-b", "ls-c"]) await createVolume(h, n, { labels: { group: "ls", n } });
    const page1 = await call(h.volumes, h.volumes.listVolumes, {
      pageSize: 2,
      pageToken: "",
      labelSelector: { group: "ls" },
    });
    expect(page1.volumes.map((v) => v.name)).toEqual(["ls-a", "ls-b"]);
    expect(page1.nextPageToken).not.toBe("");
    const page2 = await call(h.volumes, h.volumes.listVolumes, {
      pageSize: 2,
      pageToken: page1.nextPageToken,
      labelSelector: { group: "ls" },
    });
    expect(page2.volumes.map((v) => v.name)).toEqual(["ls-c"]);
    expect(page2.nextPageToken).toBe("");
    const one = await call(h.volumes, h.volumes.listVolumes, {
      pageSize: 0,
      pageToken: "",
      labelSelector: { n: "ls-b" },
    });
    expect(one.volumes.map((v) => v.name)).toEqual(["ls-b"]);
    await expectStatus(
      call(h.volumes, h.volumes.listVolumes, { pageSize: 1, pageToken: "garbage!", labelSelector: {} }),
      status.INVALID_ARGUMENT,
      "INVALID_PAGE_TOKEN",
    );
  });

  it("deletes a volume: file and record are gone", async () => {
    await createVolume(h, "doomed");
    await call(h.volumes, h.volumes.deleteVolume, { name: "doomed", requestId: "" });
    expect(fs.existsSync(path.join(h.pool, "doomed.raw"))).toBe(false);
    await expectStatus(call(h.volumes, h.volumes.getVolume, { name: "doomed" }), status.NOT_FOUND);
    // The name is free again, with a new uid.
    await createVolume(h, "doomed");
  });

  it("answers a retried delete (same request_id) with OK again, touching nothing else", async () => {
    await createVolume(h, "retried");
    await call(h.volumes, h.volumes.deleteVolume, { name: "retried", requestId: "del-retried-1" });
    // The answer was lost and the client retries: OK, although the volume is gone.
    await call(h.volumes, h.volumes.deleteVolume, { name: "retried", requestId: "del-retried-1" });
    // A volume created under the name since is not deleted by a late retry.
    await createVolume(h, "retried");
    await call(h.volumes, h.volumes.deleteVolume, { name: "retried", requestId: "del-retried-1" });
    expect(fs.existsSync(path.join(h.pool, "retried.raw"))).toBe(true);
    await call(h.volumes, h.volumes.getVolume, { name: "retried" });
    // The id of that delete cannot stand for deleting another volume.
    await expectStatus(
      call(h.volumes, h.volumes.deleteVolume, { name: "doomed", requestId: "del-retried-1" }),
      status.INVALID_ARGUMENT,
      "REQUEST_ID_REUSED",
    );
    // Without a request id (or with a new one) a second delete is NOT_FOUND as before.
    await call(h.volumes, h.volumes.deleteVolume, { name: "retried", requestId: "" });
    await expectStatus(
      call(h.volumes, h.volumes.deleteVolume, { name: "retried", requestId: "" }),
      status.NOT_FOUND,
    );
    await expectStatus(
      call(h.volumes, h.volumes.deleteVolume, { name: "retried", requestId: "del-retried-2" }),
      status.NOT_FOUND,
    );
  });
});

describe("data path", () => {
  beforeAll(async () => {
    await createVolume(h, "data", { capacityBytes: BigInt(4 * MIB) });
  });

  it("writes, flushes and reads back", async () => {
    const payload = Buffer.alloc(256 * 1024, 0xab);
    const res = await write([
      open("data"),
      chunk(MIB, payload),
      { payload: { $case: "flush", flush: {} } },
      chunk(3 * MIB, payload),
    ]);
    expect(res).toEqual({ writtenBytes: 512n * 1024n, zeroedBytes: 0n, flushedBytes: 512n * 1024n });
    const full = await read({ name: "data", chunkSize: 1024 * 1024 });
    const bytes = Buffer.concat(
      full.map((m) => (m.payload?.$case === "chunk" ? m.payload.chunk.data : Buffer.alloc(0))),
    );
    expect(bytes.length).toBe(4 * MIB);
    expect(bytes.subarray(MIB, MIB + payload.length).equals(payload)).toBe(true);
    expect(bytes.subarray(0, MIB).every((b) => b === 0)).toBe(true);
  });

  it("reads sparsely: zero runs as messages, data as bounded chunks", async () => {
    const messages = await read({ name: "data", sparse: true, chunkSize: 64 * 1024 });
    const zeros = messages.filter((m) => m.payload?.$case === "zero");
    const chunks = messages.filter((m) => m.payload?.$case === "chunk");
    expect(zeros.length).toBeGreaterThan(0);
    for (const c of chunks)
      if (c.payload?.$case === "chunk") expect(c.payload.chunk.data.length).toBeLessThanOrEqual(64 * 1024);
    const dataBytes = chunks.reduce(
      (n, c) => n + (c.payload?.$case === "chunk" ? c.payload.chunk.data.length : 0),
      0,
    );
    expect(dataBytes).toBeLessThan(4 * MIB);
    expect(dataBytes).toBeGreaterThanOrEqual(512 * 1024);
  });

  it("rejects reads and writes past the end with OUT_OF_RANGE", async () => {
    await expectStatus(
      read({ name: "data", offset: BigInt(4 * MIB), length: 1n }),
      status.OUT_OF_RANGE,
      "PAST_END",
    );
    await expectStatus(read({ name: "data", offset: BigInt(5 * MIB) }), status.OUT_OF_RANGE);
    await expectStatus(write([open("data"), chunk(4 * MIB - 10, Buffer.alloc(20, 1))]), status.OUT_OF_RANGE);
    await expectStatus(
      write([open("data"), chunk(2 ** 60, Buffer.alloc(1))]),
      status.OUT_OF_RANGE,
      "VALUE_TOO_LARGE",
    );
    await expectStatus(
      read({ name: "data", chunkSize: 16 * MIB }),
      status.INVALID_ARGUMENT,
      "INVALID_CHUNK_SIZE",
    );
  });

  it("requires open first", async () => {
    await expectStatus(write([chunk(0, Buffer.alloc(1))]), status.INVALID_ARGUMENT, "STREAM_NOT_OPENED");
  });

  it("maps allocation with qemu-img semantics, in bounded messages, ending with a summary", async () => {
    const messages = await collect(
      h.allocation.getAllocationMap({
        name: "data",
        offset: 0n,
        length: 0n,
        baseVolume: "",
        maxExtentsPerMessage: 1,
      }),
    );
    expect(messages.length).toBeGreaterThan(1);
    for (const m of messages) expect(m.extents.length).toBeLessThanOrEqual(1);
    const extents = messages.flatMap((m) => m.extents);
    let pos = 0n;
    for (const e of extents) {
      expect(e.offset).toBe(pos);
      pos += e.length;
    }
    expect(pos).toBe(BigInt(4 * MIB));
    const last = messages[messages.length - 1];
    expect(last?.nextOffset).toBe(BigInt(4 * MIB));
    expect(last?.summary).toBeDefined();
    expect(messages.slice(0, -1).every((m) => m.summary === undefined)).toBe(true);
    const s = last?.summary;
    expect((s?.dataBytes ?? 0n) + (s?.zeroBytes ?? 0n) + (s?.unallocatedBytes ?? 0n)).toBe(BigInt(4 * MIB));
    // Resume from the middle.
    const resumed = await collect(
      h.allocation.getAllocationMap({
        name: "data",
        offset: BigInt(2 * MIB),
        length: 0n,
        baseVolume: "",
        maxExtentsPerMessage: 0,
      }),
    );
    expect(resumed[0]?.extents[0]?.offset).toBe(BigInt(2 * MIB));
  });

  it("zeroes and discards ranges", async () => {
    await call(h.allocation, h.allocation.writeZeroes, {
      name: "data",
      offset: BigInt(MIB),
      length: 4096n,
      mayUnmap: true,
      requestId: "",
    });
    await call(h.allocation, h.allocation.discard, {
      name: "data",
      offset: BigInt(3 * MIB),
      length: BigInt(256 * 1024),
      requestId: "",
    });
    const [first] = await read({ name: "data", offset: BigInt(MIB), length: 8192n });
    const data = first?.payload?.$case === "chunk" ? first.payload.chunk.data : Buffer.alloc(0);
    expect(data.subarray(0, 4096).every((b) => b === 0)).toBe(true);
    expect(data.subarray(4096).every((b) => b === 0xab)).toBe(true);
    const back = await read({ name: "data", offset: BigInt(3 * MIB), length: BigInt(256 * 1024) });
    expect(
      back.every((m) => m.payload?.$case !== "chunk" || m.payload.chunk.data.every((b) => b === 0)),
    ).toBe(true);
    await expectStatus(
      call(h.allocation, h.allocation.writeZeroes, {
        name: "data",
        offset: 0n,
        length: 0n,
        mayUnmap: false,
        requestId: "",
      }),
      status.INVALID_ARGUMENT,
    );
    await expectStatus(
      call(h.allocation, h.allocation.discard, {
        name: "data",
        offset: BigInt(4 * MIB),
        length: 1n,
        requestId: "",
      }),
      status.OUT_OF_RANGE,
    );
  });

  it("writes zero runs and detects zeroes", async () => {
    const res = await write([
      open("data", ZeroDetection.ZERO_DETECTION_UNMAP),
      chunk(0, Buffer.alloc(64 * 1024)),
      { payload: { $case: "zero", zero: { offset: 0n, length: 4096n } } },
    ]);
    expect(res).toEqual({ writtenBytes: 65536n, zeroedBytes: 4096n, flushedBytes: 69632n });
  });
});

describe("jobs, health and reflection", () => {
  it("gets, lists and watches jobs", async () => {
    const events = await createVolume(h, "jobbed");
    const id = events[0]?.job?.id as string;
    const { job } = await call(h.jobs, h.jobs.getJob, { id });
    expect(job?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    const watched = await collect(h.jobs.watchJob({ id }));
    expect(watched.map((e) => e.job?.state)).toEqual([JobState.JOB_STATE_SUCCEEDED]);
    const list = await call(h.jobs, h.jobs.listJobs, {
      pageSize: 10,
      pageToken: "",
      volume: "jobbed",
      states: [],
      kind: 0,
    });
    expect(list.jobs.map((j) => j.id)).toEqual([id]);
    const cancelled = await call(h.jobs, h.jobs.cancelJob, { id });
    expect(cancelled.job?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
  });

  it("refuses to delete a volume while a data stream holds it", async () => {
    await createVolume(h, "busy", { capacityBytes: BigInt(MIB) });
    const stream = h.data.writeVolume(() => {});
    stream.write(open("busy"));
    stream.write(chunk(0, Buffer.alloc(4096, 1)));
    await new Promise((r) => setTimeout(r, 200));
    await expectStatus(
      call(h.volumes, h.volumes.deleteVolume, { name: "busy", requestId: "" }),
      status.FAILED_PRECONDITION,
      "VOLUME_BUSY",
    );
    stream.end();
  });

  it("serves grpc.health.v1 for the server and each service", async () => {
    const health = await healthClient(h);
    for (const service of ["", "vdisk.v1.VolumeService", "vdisk.v1.DataService"])
      expect(await health.check(service)).toBe("SERVING");
    health.close();
  });
});

describe("cancellation and transport", () => {
  /** Note: returning from inside the for-await destroys the stream, which cancels the call. */
  async function firstRunningEvent(stream: AsyncIterable<unknown>): Promise<string> {
    for await (const event of stream) {
      const job = (event as { job?: { id: string; state: number } }).job;
      if (job?.state === JobState.JOB_STATE_RUNNING) return job.id;
    }
    throw new Error("stream ended before the job ran");
  }

  async function waitTerminal(id: string) {
    for (;;) {
      const { job } = await call(h.jobs, h.jobs.getJob, { id });
      if (job !== undefined && job.state >= JobState.JOB_STATE_SUCCEEDED) return job;
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  it("CancelJob stops a FULL preallocation and leaves nothing behind", async () => {
    const stream = h.volumes.createVolume(
      createRequest("cancelme", {
        capacityBytes: 1024n ** 3n,
        preallocation: Preallocation.PREALLOCATION_FULL,
      }),
    );
    // Listen rather than `for await`: leaving a for-await early destroys the stream, i.e. cancels the call.
    const events: JobEvent[] = [];
    const ended = new Promise<void>((resolve, reject) => {
      stream.on("end", resolve);
      stream.on("error", reject);
    });
    const id = await new Promise<string>((resolve) => {
      stream.on("data", (event: JobEvent) => {
        events.push(event);
        if (event.job?.state === JobState.JOB_STATE_RUNNING) resolve(event.job.id);
      });
    });
    const { job: after } = await call(h.jobs, h.jobs.cancelJob, { id });
    expect(after?.cancelRequested).toBe(true);
    await ended;
    const terminal = events[events.length - 1]?.job;
    expect(terminal?.state).toBe(JobState.JOB_STATE_CANCELLED);
    expect(terminal?.error?.code).toBe(status.CANCELLED);
    await expectStatus(call(h.volumes, h.volumes.getVolume, { name: "cancelme" }), status.NOT_FOUND);
    expect(fs.readdirSync(path.join(h.pool, ".vdisk", "tmp"))).toEqual([]);
    expect(fs.existsSync(path.join(h.pool, "cancelme.raw"))).toBe(false);
  });

  it("cancels on disconnect only when asked", async () => {
    const stream = h.volumes.createVolume(
      createRequest("dropped", {
        capacityBytes: 1024n ** 3n,
        preallocation: Preallocation.PREALLOCATION_FULL,
        cancelOnDisconnect: true,
      }),
    );
    stream.on("error", () => {});
    const id = await firstRunningEvent(stream);
    stream.cancel();
    expect((await waitTerminal(id)).state).toBe(JobState.JOB_STATE_CANCELLED);

    const kept = h.volumes.createVolume(
      createRequest("kept", {
        capacityBytes: BigInt(16 * MIB),
        preallocation: Preallocation.PREALLOCATION_FULL,
      }),
    );
    kept.on("error", () => {});
    let keptId = "";
    for await (const event of kept) {
      keptId = (event as JobEvent).job?.id ?? "";
      break; // the first event carries the id; leaving the loop cancels the call
    }
    kept.cancel();
    expect((await waitTerminal(keptId)).state).toBe(JobState.JOB_STATE_SUCCEEDED);
  });

  it("advertises larger HTTP/2 windows than Node's 64 KiB default", async () => {
    const http2 = await import("node:http2");
    const session = http2.connect(`http://127.0.0.1:${h.server.port}`);
    const settings = await new Promise<{ initialWindowSize?: number }>((resolve, reject) => {
      session.once("remoteSettings", resolve);
      session.once("error", reject);
    });
    session.close();
    expect(settings.initialWindowSize).toBe(8 * MIB);
  });
});

describe("vmdk volumes", () => {
  it("creates a monolithicSparse vmdk that round-trips data and passes qemu-img check", async () => {
    const events = await createVolume(h, "disk-vmdk", {
      format: VolumeFormat.VOLUME_FORMAT_VMDK,
      capacityBytes: BigInt(16 * MIB),
    });
    expect(events[events.length - 1]?.job?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    const payload = Buffer.alloc(128 * 1024, 0x5a);
    await write([open("disk-vmdk"), chunk(3 * MIB, payload)]);
    const back = await read({ name: "disk-vmdk", offset: BigInt(3 * MIB), length: BigInt(payload.length) });
    const bytes = Buffer.concat(
      back.map((m) => (m.payload?.$case === "chunk" ? m.payload.chunk.data : Buffer.alloc(0))),
    );
    expect(bytes.equals(payload)).toBe(true);
    const { volume } = await call(h.volumes, h.volumes.getVolume, { name: "disk-vmdk" });
    expect(volume).toMatchObject({
      format: VolumeFormat.VOLUME_FORMAT_VMDK,
      capacityBytes: BigInt(16 * MIB),
      clusterSize: 65536,
      allocationBytes: 128n * 1024n,
      vmdk: { subformat: VmdkSubformat.VMDK_SUBFORMAT_MONOLITHIC_SPARSE },
    });
    // The oracle: qemu-img must accept what we wrote. Missing qemu-img fails here, loudly. -U: the server
    // holds the image lock while the volume is open, as a VM would.
    const { execFileSync } = await import("node:child_process");
    const file = path.join(h.pool, "disk-vmdk.vmdk");
    execFileSync("qemu-img", ["check", "-U", "-f", "vmdk", file], { stdio: "pipe" });
    const info = JSON.parse(
      execFileSync("qemu-img", ["info", "-U", "--output=json", "-f", "vmdk", file]).toString(),
    ) as {
      "virtual-size": number;
    };
    expect(info["virtual-size"]).toBe(16 * MIB);
  });

  it("rejects what vmdk cannot do", async () => {
    const vmdk = { format: VolumeFormat.VOLUME_FORMAT_VMDK };
    await expectStatus(
      createVolume(h, "v1", { ...vmdk, preallocation: Preallocation.PREALLOCATION_FULL }),
      status.INVALID_ARGUMENT,
      "INVALID_PREALLOCATION",
    );
    await expectStatus(
      createVolume(h, "v2", { ...vmdk, clusterSize: 1000 }),
      status.INVALID_ARGUMENT,
      "INVALID_CLUSTER_SIZE",
    );
    await expectStatus(
      createVolume(h, "v3", {
        ...vmdk,
        vmdk: { subformat: VmdkSubformat.VMDK_SUBFORMAT_STREAM_OPTIMIZED, zeroedGrain: false },
      }),
      status.INVALID_ARGUMENT,
      "INVALID_SUBFORMAT",
    );
  });
});

describe("resize", () => {
  const resize = (
    name: string,
    capacity: number,
    extra: { allowShrink?: boolean; preallocation?: Preallocation } = {},
  ) =>
    collect(
      h.volumes.resizeVolume({
        name,
        capacityBytes: BigInt(capacity),
        allowShrink: extra.allowShrink ?? false,
        preallocation: extra.preallocation ?? Preallocation.PREALLOCATION_OFF,
        requestId: "",
        cancelOnDisconnect: false,
      }),
    );

  it("grows with preallocation, refuses an unasked shrink, shrinks when allowed", async () => {
    await createVolume(h, "growing", { capacityBytes: BigInt(MIB) });
    const events = await resize("growing", 3 * MIB, { preallocation: Preallocation.PREALLOCATION_FULL });
    const last = events[events.length - 1]?.job;
    expect(last?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    expect(last?.result?.result?.$case === "volume" && last.result.result.volume.capacityBytes).toBe(
      BigInt(3 * MIB),
    );
    const { volume } = await call(h.volumes, h.volumes.getVolume, { name: "growing" });
    expect(volume?.capacityBytes).toBe(BigInt(3 * MIB));
    expect(volume?.allocationBytes).toBe(BigInt(2 * MIB));

    await expectStatus(resize("growing", MIB), status.INVALID_ARGUMENT, "SHRINK_NOT_ALLOWED");
    await resize("growing", 512 * 1024, { allowShrink: true });
    const { volume: shrunk } = await call(h.volumes, h.volumes.getVolume, { name: "growing" });
    expect(shrunk?.capacityBytes).toBe(512n * 1024n);
    expect(fs.statSync(path.join(h.pool, "growing.raw")).size).toBe(512 * 1024);
    await expectStatus(read({ name: "growing", offset: BigInt(MIB), length: 1n }), status.OUT_OF_RANGE);
  });

  it("validates the request", async () => {
    await expectStatus(resize("ghost", MIB), status.NOT_FOUND);
    await expectStatus(resize("growing", 0), status.INVALID_ARGUMENT, "INVALID_CAPACITY");
    await expectStatus(resize("growing", MAX_CAPACITY + 1), status.INVALID_ARGUMENT, "CAPACITY_ABOVE_LIMIT");
    await expectStatus(resize("disk-vmdk", 32 * MIB), status.UNIMPLEMENTED, "NOT_IMPLEMENTED");
  });

  it("rolls a cancelled grow back to the old size", async () => {
    await createVolume(h, "rollback", { capacityBytes: BigInt(MIB) });
    const stream = h.volumes.resizeVolume({
      name: "rollback",
      capacityBytes: 1024n ** 3n,
      allowShrink: false,
      preallocation: Preallocation.PREALLOCATION_FULL,
      requestId: "",
      cancelOnDisconnect: false,
    });
    const events: JobEvent[] = [];
    const ended = new Promise<void>((resolve, reject) => {
      stream.on("end", resolve);
      stream.on("error", reject);
    });
    const id = await new Promise<string>((resolve) => {
      stream.on("data", (event: JobEvent) => {
        events.push(event);
        if (event.job?.state === JobState.JOB_STATE_RUNNING) resolve(event.job.id);
      });
    });
    await call(h.jobs, h.jobs.cancelJob, { id });
    await ended;
    expect(events[events.length - 1]?.job?.state).toBe(JobState.JOB_STATE_CANCELLED);
    const { volume } = await call(h.volumes, h.volumes.getVolume, { name: "rollback" });
    expect(volume?.capacityBytes).toBe(BigInt(MIB));
    expect(fs.statSync(path.join(h.pool, "rollback.raw")).size).toBe(MIB);
  });
});

describe("qcow2 volumes", () => {
  it("creates a base and a linked overlay by name, reads through the chain, and protects the base", async () => {
    const q = { format: VolumeFormat.VOLUME_FORMAT_QCOW2 };
    await createVolume(h, "q-base", { ...q, capacityBytes: BigInt(4 * MIB), clusterSize: 65536 });
    const baseData = Buffer.alloc(64 * 1024, 0x11);
    await write([open("q-base"), chunk(0, baseData)]);
    // No capacity: the overlay takes its backing volume's.
    const events = await createVolume(h, "q-top", { ...q, backingVolume: "q-base", capacityBytes: 0n });
    expect(events[events.length - 1]?.job?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    const topData = Buffer.alloc(64 * 1024, 0x22);
    await write([open("q-top"), chunk(MIB, topData)]);

    const [first] = await read({ name: "q-top", offset: 0n, length: BigInt(baseData.length) });
    expect(first?.payload?.$case === "chunk" && first.payload.chunk.data.equals(baseData)).toBe(true);
    const { volume } = await call(h.volumes, h.volumes.getVolume, { name: "q-top" });
    expect(volume).toMatchObject({
      format: VolumeFormat.VOLUME_FORMAT_QCOW2,
      capacityBytes: BigInt(4 * MIB),
      backingVolume: "q-base",
      chainDepth: 1,
      clusterSize: 65536,
      allocationBytes: BigInt(topData.length),
      qcow2: { compat: Qcow2Compat.QCOW2_COMPAT_V3, refcountBits: 16 },
    });

    const map = await collect(
      h.allocation.getAllocationMap({
        name: "q-top",
        offset: 0n,
        length: 0n,
        baseVolume: "",
        maxExtentsPerMessage: 0,
      }),
    );
    const extents = map.flatMap((m) => m.extents);
    expect(extents[0]).toMatchObject({ offset: 0n, length: 65536n, data: true, depth: 1, present: true });
    expect(extents.find((e) => e.offset === BigInt(MIB))).toMatchObject({ data: true, depth: 0 });

    await expectStatus(
      call(h.volumes, h.volumes.deleteVolume, { name: "q-base", requestId: "" }),
      status.FAILED_PRECONDITION,
      "HAS_DEPENDANTS",
    );

    // The oracle: qemu-img sees a consistent chain that names its backing by file name.
    const { execFileSync } = await import("node:child_process");
    const top = path.join(h.pool, "q-top.qcow2");
    execFileSync("qemu-img", ["check", "-U", "-f", "qcow2", top], { stdio: "pipe" });
    const info = JSON.parse(
      execFileSync("qemu-img", ["info", "-U", "--output=json", "-f", "qcow2", top]).toString(),
    ) as {
      "backing-filename"?: string;
    };
    expect(info["backing-filename"]).toBe("q-base.qcow2");

    await call(h.volumes, h.volumes.deleteVolume, { name: "q-top", requestId: "" });
    await call(h.volumes, h.volumes.deleteVolume, { name: "q-base", requestId: "" });
  });

  it("validates qcow2 options", async () => {
    const q = { format: VolumeFormat.VOLUME_FORMAT_QCOW2 };
    await expectStatus(
      createVolume(h, "q1", { ...q, clusterSize: 3000 }),
      status.INVALID_ARGUMENT,
      "INVALID_CLUSTER_SIZE",
    );
    await expectStatus(
      createVolume(h, "q2", {
        ...q,
        qcow2: { compat: 0, lazyRefcounts: false, refcountBits: 3, extendedL2: false },
      }),
      status.INVALID_ARGUMENT,
      "INVALID_REFCOUNT_BITS",
    );
    await expectStatus(createVolume(h, "q3", { ...q, backingVolume: "nope" }), status.NOT_FOUND);
    await createVolume(h, "q-meta", {
      ...q,
      capacityBytes: BigInt(2 * MIB),
      preallocation: Preallocation.PREALLOCATION_METADATA,
    });
    const { volume } = await call(h.volumes, h.volumes.getVolume, { name: "q-meta" });
    expect(volume?.preallocation).toBe(Preallocation.PREALLOCATION_METADATA);
  });

  it("clones LINKED as a qcow2 overlay (also over a raw source)", async () => {
    const clone = (source: string, name: string, mode: CloneMode) =>
      collect(
        h.volumes.cloneVolume({
          source,
          name,
          mode,
          format: 0,
          preallocation: 0,
          clusterSize: 0,
          qcow2: undefined,
          vmdk: undefined,
          labels: { clone: "yes" },
          requestId: "",
          cancelOnDisconnect: false,
        }),
      );
    await createVolume(h, "raw-src", { capacityBytes: BigInt(MIB) });
    const payload = Buffer.alloc(4096, 0x77);
    await write([open("raw-src"), chunk(8192, payload)]);
    const events = await clone("raw-src", "raw-clone", CloneMode.CLONE_MODE_LINKED);
    const last = events[events.length - 1]?.job;
    expect(last?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    expect(last?.kind).toBe(JobKind.JOB_KIND_CLONE_VOLUME);
    const [first] = await read({ name: "raw-clone", offset: 8192n, length: 4096n });
    expect(first?.payload?.$case === "chunk" && first.payload.chunk.data.equals(payload)).toBe(true);
    const { volume } = await call(h.volumes, h.volumes.getVolume, { name: "raw-clone" });
    expect(volume).toMatchObject({
      format: VolumeFormat.VOLUME_FORMAT_QCOW2,
      backingVolume: "raw-src",
      capacityBytes: BigInt(MIB),
      labels: { clone: "yes" },
    });
    await expectStatus(clone("ghost", "c", CloneMode.CLONE_MODE_LINKED), status.NOT_FOUND);
  });

  it("clones FULL from qcow2 to raw exactly as qemu-img convert does, holes included", async () => {
    await createVolume(h, "full-src", {
      format: VolumeFormat.VOLUME_FORMAT_QCOW2,
      capacityBytes: BigInt(16 * MIB),
    });
    const pieces: Array<[number, Buffer]> = [
      [MIB, Buffer.alloc(MIB, 0x5a)],
      [4 * MIB + 512, Buffer.from(Array.from({ length: 3 * MIB + 100 }, (_, i) => (i * 7) & 0xff))],
      [15 * MIB, Buffer.alloc(64 * 1024, 0x33)],
    ];
    await write([open("full-src"), ...pieces.map(([offset, data]) => chunk(offset, data))]);
    const events = await collect(
      h.volumes.cloneVolume({
        source: "full-src",
        name: "full-raw",
        mode: CloneMode.CLONE_MODE_FULL,
        format: VolumeFormat.VOLUME_FORMAT_RAW,
        preallocation: 0,
        clusterSize: 0,
        qcow2: undefined,
        vmdk: undefined,
        labels: {},
        requestId: "",
        cancelOnDisconnect: false,
      }),
    );
    expect(events[events.length - 1]?.job?.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    // The oracle: qemu-img's own conversion of the source. -U: the server holds image locks.
    const source = path.join(h.pool, "full-src.qcow2");
    const clone = path.join(h.pool, "full-raw.raw");
    const peer = path.join(h.pool, "..", `${path.basename(h.pool)}-peer.raw`);
    try {
      execFileSync("qemu-img", ["convert", "-U", "-f", "qcow2", "-O", "raw", source, peer], {
        stdio: "pipe",
      });
      execFileSync("qemu-img", ["compare", "-U", "-f", "raw", "-F", "raw", peer, clone], { stdio: "pipe" });
      // As sparse as qemu-img's output (give or take the file system's extent-tree blocks).
      const allocated = fs.statSync(clone).blocks * 512;
      expect(Math.abs(allocated - fs.statSync(peer).blocks * 512)).toBeLessThanOrEqual(64 * 1024);
      expect(allocated).toBeLessThan(6 * MIB);
    } finally {
      fs.rmSync(peer, { force: true });
    }
  });
});
