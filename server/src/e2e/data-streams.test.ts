import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ZeroDetection } from "../gen/vdisk/v1/common.js";
import type { ReadVolumeResponse, WriteVolumeRequest, WriteVolumeResponse } from "../gen/vdisk/v1/data.js";
import { call, collect, createVolume, type Harness, startHarness } from "./harness.js";

/** The data path's pipelining (read-ahead, concurrent chunk writes) must not change what clients observe. */

const MIB = 1024 * 1024;
let h: Harness;

beforeAll(async () => {
  h = await startHarness();
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

const open = (name: string): WriteVolumeRequest => ({
  payload: { $case: "open", open: { name, zeroDetection: ZeroDetection.ZERO_DETECTION_OFF } },
});
const chunk = (offset: number, data: Buffer): WriteVolumeRequest => ({
  payload: { $case: "chunk", chunk: { offset: BigInt(offset), data } },
});

async function readAll(name: string, chunkSize: number): Promise<Buffer> {
  const messages = await collect(
    h.data.readVolume({ name, offset: 0n, length: 0n, chunkSize, sparse: false }),
  );
  let expected = 0;
  const parts: Buffer[] = [];
  for (const m of messages) {
    if (m.payload?.$case !== "chunk") throw new Error("a dense read sends only chunks");
    expect(Number(m.payload.chunk.offset)).toBe(expected);
    expected += m.payload.chunk.data.length;
    parts.push(m.payload.chunk.data);
  }
  return Buffer.concat(parts);
}

describe("data streams", () => {
  it("applies overlapping chunks in stream order, as if written one by one", async () => {
    await createVolume(h, "overlaps", { capacityBytes: BigInt(8 * MIB) });
    const expected = Buffer.alloc(8 * MIB);
    const messages: WriteVolumeRequest[] = [open("overlaps")];
    // Disjoint runs interleaved with later chunks that overwrite parts of earlier ones.
    const plan: [number, number][] = [
      [0, MIB],
      [MIB, MIB],
      [2 * MIB, MIB],
      [MIB / 2, MIB],
      [3 * MIB, 2 * MIB],
      [4 * MIB - 10, 20],
      [0, 4096],
      [5 * MIB, 3 * MIB],
      [2 * MIB + 1, MIB],
    ];
    for (const [offset, length] of plan) {
      const data = randomBytes(length);
      data.copy(expected, offset);
      messages.push(chunk(offset, data));
    }
    const res = await write(messages);
    expect(res.writtenBytes).toBe(BigInt(plan.reduce((n, [, length]) => n + length, 0)));
    expect((await readAll("overlaps", MIB)).equals(expected)).toBe(true);
    expect((await readAll("overlaps", 300_000)).equals(expected)).toBe(true);
  });

  it("releases the volume when a reader cancels mid-stream", async () => {
    await createVolume(h, "cancelled-read", { capacityBytes: BigInt(32 * MIB) });
    const chunks = Array.from({ length: 32 }, (_, i) => chunk(i * MIB, randomBytes(MIB)));
    await write([open("cancelled-read"), ...chunks]);
    const stream = h.data.readVolume({
      name: "cancelled-read",
      offset: 0n,
      length: 0n,
      chunkSize: 256 * 1024,
      sparse: false,
    });
    stream.on("error", () => {});
    await new Promise<ReadVolumeResponse>((resolve) => stream.once("data", resolve));
    stream.cancel();
    // The server ends the call and its read-ahead; until then the volume is busy, so retry briefly.
    const deadline = Date.now() + 5000;
    for (;;) {
      try {
        await call(h.volumes, h.volumes.deleteVolume, { name: "cancelled-read", requestId: "" });
        break;
      } catch (err) {
        if (Date.now() > deadline) throw err;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  });
});
