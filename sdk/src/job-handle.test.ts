import { create } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createRouterTransport, type HandlerContext } from "@connectrpc/connect";
import { describe, expect, it, vi } from "vitest";
import { createVdiskClient } from "./client.js";
import { VdiskError } from "./errors.js";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { VolumeFormat } from "./gen/vdisk/v1/common_pb.js";
import { JobService, JobState } from "./gen/vdisk/v1/job_pb.js";
import { VolumeService } from "./gen/vdisk/v1/volume_pb.js";
import { VolumeState } from "./gen/vdisk/v1/volume_types_pb.js";
import { authInterceptor } from "./transport.js";
import type { JobSnapshot } from "./types.js";

const FAST_REATTACH = { maxAttempts: 5, initialDelayMs: 1, maxDelayMs: 5 };

function running(id: string, done: number, total = 100) {
  return {
    job: {
      id,
      state: JobState.RUNNING,
      progress: { doneBytes: BigInt(done), totalBytes: BigInt(total), phase: "creating" },
    },
  };
}

function succeeded(id: string, name = "disk1") {
  return {
    job: {
      id,
      state: JobState.SUCCEEDED,
      progress: { doneBytes: 100n, totalBytes: 100n, phase: "done" },
      result: {
        result: {
          case: "volume" as const,
          value: { name, format: VolumeFormat.RAW, capacityBytes: 1n << 40n, state: VolumeState.READY },
        },
      },
    },
  };
}

function ended(id: string, state: JobState.FAILED | JobState.CANCELLED, code: Code, reason: string) {
  return {
    job: {
      id,
      state,
      error: {
        code,
        message: `job ${id} ended`,
        details: [anyPack(ErrorInfoSchema, create(ErrorInfoSchema, { reason, domain: "vdisk.dev" }))],
      },
    },
  };
}

function untilAborted(ctx: HandlerContext): Promise<void> {
  return new Promise((resolve) => ctx.signal.addEventListener("abort", () => resolve(), { once: true }));
}

async function collect(handle: AsyncIterable<JobSnapshot>): Promise<JobSnapshot[]> {
  const seen: JobSnapshot[] = [];
  for await (const snapshot of handle) seen.push(snapshot);
  return seen;
}

describe("JobHandle", () => {
  it("yields progress snapshots as plain numbers and resolves the typed result", async () => {
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        async *createVolume() {
          yield running("job-1", 0);
          yield running("job-1", 50);
          yield succeeded("job-1");
        },
      });
    });
    const handle = createVdiskClient({ transport }).createVolume({
      name: "disk1",
      format: "raw",
      capacityBytes: 2 ** 40,
    });
    const snapshots = await collect(handle);
    expect(snapshots.at(-1)).toMatchObject({
      jobId: "job-1",
      state: "succeeded",
      doneBytes: 100,
      totalBytes: 100,
    });
    expect(snapshots.every((s) => typeof s.doneBytes === "number")).toBe(true);
    expect(await handle.jobId).toBe("job-1");
    expect(await handle.result).toMatchObject({
      name: "disk1",
      format: "raw",
      capacityBytes: 2 ** 40,
      state: "ready",
    });
  });

  it("rejects the result with the job's error when it fails, after yielding the terminal snapshot", async () => {
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        async *createVolume() {
          yield running("job-2", 10);
          yield ended("job-2", JobState.FAILED, Code.ResourceExhausted, "NO_SPACE");
        },
      });
    });
    const handle = createVdiskClient({ transport }).createVolume({
      name: "disk1",
      format: "raw",
      capacityBytes: 1 << 30,
    });
    const snapshots = await collect(handle);
    expect(snapshots.at(-1)?.state).toBe("failed");
    const error = await handle.result.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VdiskError);
    expect(error).toMatchObject({ code: "resource_exhausted", reason: "NO_SPACE" });
  });

  it("cancel() calls CancelJob with the job id and the result rejects as canceled", async () => {
    const cancelled: string[] = [];
    let release: () => void = () => {};
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        async *createVolume() {
          yield running("job-3", 5);
          await released;
          yield ended("job-3", JobState.CANCELLED, Code.Canceled, "CANCELLED");
        },
      });
      service(JobService, {
        cancelJob(req) {
          cancelled.push(req.id);
          release();
          return { job: { id: req.id, state: JobState.RUNNING, cancelRequested: true } };
        },
      });
    });
    const handle = createVdiskClient({ transport }).createVolume({
      name: "disk1",
      format: "raw",
      capacityBytes: 1 << 30,
    });
    const job = await handle.cancel();
    expect(job).toMatchObject({ id: "job-3", cancelRequested: true });
    expect(cancelled).toEqual(["job-3"]);
    await expect(handle.result).rejects.toMatchObject({ code: "canceled" });
  });

  it("aborting the signal cancels the job on the server, not just the stream", async () => {
    const cancelled: string[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        async *resizeVolume(_req, ctx) {
          yield running("job-4", 1);
          await untilAborted(ctx);
        },
      });
      service(JobService, {
        cancelJob(req) {
          cancelled.push(req.id);
          return { job: { id: req.id, state: JobState.RUNNING, cancelRequested: true } };
        },
      });
    });
    const abort = new AbortController();
    const handle = createVdiskClient({ transport }).resizeVolume("disk1", 1 << 30, { signal: abort.signal });
    const iterator = handle[Symbol.asyncIterator]();
    expect((await iterator.next()).value).toMatchObject({ jobId: "job-4", state: "running" });
    abort.abort();
    await expect(handle.result).rejects.toMatchObject({ code: "canceled" });
    await expect(iterator.next()).rejects.toMatchObject({ code: "canceled" });
    await vi.waitFor(() => expect(cancelled).toEqual(["job-4"]));
  });

  it("an abort that arrives before the first event still cancels the job once its id is known", async () => {
    const cancelled: string[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        async *cloneVolume(_req, ctx) {
          await new Promise((resolve) => setTimeout(resolve, 30));
          yield running("job-5", 0);
          await untilAborted(ctx);
        },
      });
      service(JobService, {
        cancelJob(req) {
          cancelled.push(req.id);
          return { job: { id: req.id, state: JobState.CANCELLED } };
        },
      });
    });
    const abort = new AbortController();
    const handle = createVdiskClient({ transport }).cloneVolume("src", "dst", { signal: abort.signal });
    abort.abort();
    await expect(handle.result).rejects.toMatchObject({ code: "canceled" });
    await vi.waitFor(() => expect(cancelled).toEqual(["job-5"]));
  });

  it("an already-aborted signal rejects at once", async () => {
    const transport = createRouterTransport(() => {});
    const handle = createVdiskClient({ transport }).checkVolume("disk1", { signal: AbortSignal.abort() });
    await expect(handle.result).rejects.toMatchObject({ code: "canceled" });
    await expect(handle.jobId).rejects.toMatchObject({ code: "canceled" });
  });

  it("re-attaches with WatchJob when the stream breaks, so the result still settles", async () => {
    const watched: string[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        async *createVolume() {
          yield running("job-6", 40);
          throw new ConnectError("connection reset", Code.Unavailable);
        },
      });
      service(JobService, {
        async *watchJob(req) {
          watched.push(req.id);
          if (watched.length === 1) {
            // The first re-attach also breaks (the server is still restarting), after ending without a terminal event.
            yield running(req.id, 60);
            return;
          }
          yield running(req.id, 80);
          yield succeeded(req.id);
        },
      });
    });
    const client = createVdiskClient({ transport, reattach: FAST_REATTACH });
    const handle = client.createVolume({ name: "disk1", format: "raw", capacityBytes: 1 << 30 });
    const snapshots = await collect(handle);
    expect(await handle.result).toMatchObject({ name: "disk1" });
    expect(watched).toEqual(["job-6", "job-6"]);
    const done = snapshots.map((s) => s.doneBytes);
    expect(done).toEqual([...done].sort((a, b) => a - b));
    expect(snapshots.at(-1)?.state).toBe("succeeded");
  });

  it("gives up re-attaching on a definitive error such as NOT_FOUND", async () => {
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        async *createVolume() {
          yield running("job-7", 1);
          throw new ConnectError("stream reset", Code.Internal);
        },
      });
      service(JobService, {
        // biome-ignore lint/correctness/useYield: the job is gone
        async *watchJob() {
          throw new ConnectError("no such job", Code.NotFound);
        },
      });
    });
    const handle = createVdiskClient({ transport, reattach: FAST_REATTACH }).createVolume({
      name: "d",
      format: "raw",
      capacityBytes: 1,
    });
    await expect(handle.result).rejects.toMatchObject({ code: "not_found" });
    await expect(collect(handle)).rejects.toMatchObject({ code: "not_found" });
  });

  it("does not re-attach once the client is closed", async () => {
    let breakStream: () => void = () => {};
    const broken = new Promise<void>((resolve) => {
      breakStream = resolve;
    });
    let watches = 0;
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        async *createVolume() {
          yield running("job-11", 1);
          await broken;
          throw new ConnectError("connection closed", Code.Unavailable);
        },
      });
      service(JobService, {
        async *watchJob(req) {
          watches++;
          yield succeeded(req.id);
        },
      });
    });
    const client = createVdiskClient({ transport, reattach: FAST_REATTACH });
    const handle = client.createVolume({ name: "d", format: "raw", capacityBytes: 1 });
    await handle.jobId;
    client.close();
    breakStream();
    await expect(handle.result).rejects.toMatchObject({ code: "canceled", message: "the client was closed" });
    expect(watches).toBe(0);
  });

  it("watchJob attaches to an existing job and returns its generic result", async () => {
    const transport = createRouterTransport(({ service }) => {
      service(JobService, {
        async *watchJob(req) {
          yield {
            job: {
              id: req.id,
              state: JobState.SUCCEEDED,
              result: {
                result: { case: "check" as const, value: { leaks: 3n, qemuExitCode: 3 } },
                allocate: { copiedBytes: 0n },
              },
            },
          };
        },
      });
    });
    const result = await createVdiskClient({ transport }).watchJob("job-8").result;
    expect(result.check).toMatchObject({ leaks: 3, qemuExitCode: 3 });
    expect(result.volume).toBeUndefined();
  });
});

describe("request ids and retries", () => {
  it("retries a create that fails with UNAVAILABLE before its first event, reusing the request id", async () => {
    const seen: string[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        async *createVolume(req) {
          seen.push(req.requestId);
          if (seen.length < 3) throw new ConnectError("connection dropped", Code.Unavailable);
          yield succeeded("job-9", req.name);
        },
      });
    });
    const client = createVdiskClient({ transport, reattach: FAST_REATTACH });
    const volume = await client.createVolumeAndWait({ name: "disk1", format: "raw", capacityBytes: 1 << 20 });
    expect(volume.name).toBe("disk1");
    expect(seen).toHaveLength(3);
    expect(new Set(seen).size).toBe(1);
    expect(seen[0]).toMatch(/^[0-9a-f-]{36}$/);
  });

  it("two separate calls get different request ids; a given one is used as is", async () => {
    const seen: string[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        async *createVolume(req) {
          seen.push(req.requestId);
          yield succeeded("job", req.name);
        },
      });
    });
    const client = createVdiskClient({ transport });
    await client.createVolumeAndWait({ name: "a", format: "raw", capacityBytes: 1 });
    await client.createVolumeAndWait({ name: "b", format: "raw", capacityBytes: 1 });
    await client.createVolumeAndWait({ name: "c", format: "raw", capacityBytes: 1 }, { requestId: "mine-1" });
    expect(seen[0]).not.toBe(seen[1]);
    expect(seen[2]).toBe("mine-1");
  });

  it("retries a unary mutation on UNAVAILABLE with the same request id, and nothing else", async () => {
    const deletes: string[] = [];
    const zeroes: string[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        deleteVolume(req) {
          deletes.push(req.requestId);
          if (deletes.length === 1) throw new ConnectError("draining", Code.Unavailable);
          return {};
        },
      });
    });
    const client = createVdiskClient({ transport, retry: { initialDelayMs: 1 } });
    await client.deleteVolume("disk1");
    expect(deletes).toHaveLength(2);
    expect(deletes[0]).toBe(deletes[1]);

    const failing = createRouterTransport(({ service }) => {
      service(VolumeService, {
        deleteVolume(req) {
          zeroes.push(req.requestId);
          throw new ConnectError("in use", Code.FailedPrecondition);
        },
      });
    });
    await expect(createVdiskClient({ transport: failing }).deleteVolume("disk1")).rejects.toMatchObject({
      code: "failed_precondition",
    });
    expect(zeroes).toHaveLength(1);
  });

  it("applies timeoutMs to unary calls only, never to job streams", async () => {
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        async getVolume(_req, ctx) {
          await untilAborted(ctx);
          return {};
        },
        async *createVolume(req) {
          await new Promise((resolve) => setTimeout(resolve, 120));
          yield succeeded("job-10", req.name);
        },
      });
    });
    const client = createVdiskClient({ transport, timeoutMs: 40 });
    await expect(client.getVolume("slow")).rejects.toMatchObject({ code: "deadline_exceeded" });
    await expect(
      client.createVolumeAndWait({ name: "slow", format: "raw", capacityBytes: 1 }),
    ).resolves.toMatchObject({ name: "slow" });
  });

  it("the auth interceptor sends the bearer token", async () => {
    const headers: (string | null)[] = [];
    const transport = createRouterTransport(
      ({ service }) => {
        service(VolumeService, {
          getVolume(req, ctx) {
            headers.push(ctx.requestHeader.get("authorization"));
            return { volume: { name: req.name } };
          },
        });
      },
      { transport: { interceptors: [authInterceptor(async () => "s3cret")] } },
    );
    await createVdiskClient({ transport }).getVolume("disk1");
    expect(headers).toEqual(["Bearer s3cret"]);
  });
});
