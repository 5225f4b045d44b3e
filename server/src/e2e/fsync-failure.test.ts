import { status } from "@grpc/grpc-js";
import { driverFor, openHostFile } from "@vdisk/engine";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import type { WriteVolumeRequest, WriteVolumeResponse } from "../gen/vdisk/v1/data.js";
import { VolumeState } from "../gen/vdisk/v1/volume_types.js";
import {
  call,
  collect,
  createVolume,
  expectStatus,
  type Harness,
  healthClient,
  startHarness,
} from "./harness.js";

let h: Harness;
let failFsync = false;

beforeAll(async () => {
  // The real host file, with fdatasync replaced by one that fails on demand (a healthy disk never does).
  h = await startHarness({
    engine: {
      driverFor,
      openHostFile: (path, opts) =>
        openHostFile(path, {
          ...opts,
          datasync: async () => {
            if (failFsync) throw Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
          },
        }),
    },
  });
});
afterAll(async () => {
  await h?.stop();
});

function write(messages: WriteVolumeRequest[]): Promise<WriteVolumeResponse> {
  return new Promise((resolve, reject) => {
    const stream = h.data.writeVolume((err, res) =>
      err ? reject(err) : resolve(res as WriteVolumeResponse),
    );
    for (const m of messages) stream.write(m);
    stream.end();
  });
}

describe("fsync failure", () => {
  it("fails the write with DATA_LOSS and leaves the volume in ERROR until an operator acts", async () => {
    await createVolume(h, "fragile");
    await createVolume(h, "sturdy");
    const health = await healthClient(h);
    expect(await health.check("vdisk.v1.Volume/fragile")).toBe("SERVING");
    const watched: string[] = [];
    const watch = health.client.watch({ service: "vdisk.v1.Volume/fragile" });
    watch.on("data", (m: { status: string }) => watched.push(m.status));
    watch.on("error", () => {}); // cancelled at the end
    await vi.waitFor(() => expect(watched).toEqual(["SERVING"]));
    failFsync = true;
    await expectStatus(
      write([
        { payload: { $case: "open", open: { name: "fragile", zeroDetection: 0 } } },
        { payload: { $case: "chunk", chunk: { offset: 0n, data: Buffer.alloc(4096, 7) } } },
      ]),
      status.DATA_LOSS,
    );
    failFsync = false;
    const { volume } = await call(h.volumes, h.volumes.getVolume, { name: "fragile" });
    expect(volume?.state).toBe(VolumeState.VOLUME_STATE_ERROR);
    expect(volume?.errorMessage).toMatch(/flush to disk failed/);
    await expectStatus(
      collect(h.data.readVolume({ name: "fragile", offset: 0n, length: 0n, chunkSize: 0, sparse: false })),
      status.FAILED_PRECONDITION,
      "VOLUME_ERROR",
    );
    // reliability.md T4: health reports NOT_SERVING for that volume — and only for it.
    expect(await health.check("vdisk.v1.Volume/fragile")).toBe("NOT_SERVING");
    await vi.waitFor(() => expect(watched).toEqual(["SERVING", "NOT_SERVING"]));
    expect(await health.check("vdisk.v1.Volume/sturdy")).toBe("SERVING");
    expect(await health.check("")).toBe("SERVING");
    expect(await health.check("vdisk.v1.DataService")).toBe("SERVING");
    expect(await health.check("vdisk.v1.Volume/no-such-volume")).toBe("NOT_FOUND");
    watch.cancel();
    health.close();
  });
});
