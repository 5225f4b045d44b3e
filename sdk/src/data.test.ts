import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createVdiskClient } from "./client.js";
import { splitZeroRuns } from "./files.js";
import { AllocationService } from "./gen/vdisk/v1/allocation_pb.js";
import { VolumeFormat } from "./gen/vdisk/v1/common_pb.js";
import { DataService, type WriteVolumeRequest } from "./gen/vdisk/v1/data_pb.js";
import { VolumeService } from "./gen/vdisk/v1/volume_pb.js";
import { KiB, MiB } from "./sizes.js";
import type { ReadPiece } from "./types.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "vdisk-sdk-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function extent(offset: number, length: number, data: boolean) {
  return { offset: BigInt(offset), length: BigInt(length), data, zero: !data, present: data, depth: 0 };
}

describe("getAllocationMap", () => {
  it("streams extents across messages and ends with the summary", async () => {
    const transport = createRouterTransport(({ service }) => {
      service(AllocationService, {
        async *getAllocationMap() {
          yield { extents: [extent(0, MiB, false)], nextOffset: BigInt(MiB) };
          yield {
            extents: [{ ...extent(MiB, MiB, true), hostOffset: BigInt(MiB) }, extent(2 * MiB, MiB, false)],
            nextOffset: BigInt(3 * MiB),
            summary: {
              dataBytes: BigInt(MiB),
              zeroBytes: BigInt(2 * MiB),
              unallocatedBytes: BigInt(2 * MiB),
              topAllocatedBytes: BigInt(MiB),
            },
          };
        },
      });
    });
    const map = await createVdiskClient({ transport }).getAllocationMap("disk1").collect();
    expect(map.extents).toEqual([
      { offset: 0, length: MiB, data: false, zero: true, present: false, depth: 0, compressed: false },
      {
        offset: MiB,
        length: MiB,
        data: true,
        zero: false,
        present: true,
        depth: 0,
        hostOffset: MiB,
        compressed: false,
      },
      { offset: 2 * MiB, length: MiB, data: false, zero: true, present: false, depth: 0, compressed: false },
    ]);
    expect(map.summary).toEqual({
      dataBytes: MiB,
      zeroBytes: 2 * MiB,
      unallocatedBytes: 2 * MiB,
      topAllocatedBytes: MiB,
    });
  });

  it("resumes from next_offset when the stream breaks with UNAVAILABLE", async () => {
    const offsets: bigint[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(AllocationService, {
        async *getAllocationMap(req) {
          offsets.push(req.offset);
          if (offsets.length === 1) {
            yield { extents: [extent(0, MiB, true)], nextOffset: BigInt(MiB) };
            throw new ConnectError("connection reset", Code.Unavailable);
          }
          yield {
            extents: [extent(MiB, MiB, false)],
            nextOffset: BigInt(2 * MiB),
            summary: { dataBytes: BigInt(MiB) },
          };
        },
      });
    });
    const stream = createVdiskClient({ transport, retry: { initialDelayMs: 1 } }).getAllocationMap("disk1", {
      length: 2 * MiB,
    });
    const extents = [];
    for await (const e of stream) extents.push(e);
    expect(extents.map((e) => e.offset)).toEqual([0, MiB]);
    expect(offsets).toEqual([0n, BigInt(MiB)]);
    expect((await stream.summary).dataBytes).toBe(MiB);
  });
});

describe("readVolume and writeVolume", () => {
  it("readVolume yields data pieces and zero runs", async () => {
    const transport = createRouterTransport(({ service }) => {
      service(DataService, {
        async *readVolume(req) {
          expect(req.sparse).toBe(true);
          yield { payload: { case: "zero", value: { offset: 0n, length: 4096n } } };
          yield { payload: { case: "chunk", value: { offset: 4096n, data: new Uint8Array([1, 2, 3]) } } };
        },
      });
    });
    const pieces: ReadPiece[] = [];
    for await (const piece of createVdiskClient({ transport }).readVolume("disk1")) pieces.push(piece);
    expect(pieces).toEqual([
      { offset: 0, length: 4096, zero: true },
      { offset: 4096, data: new Uint8Array([1, 2, 3]) },
    ]);
  });

  it("readVolume cancels the call when the consumer stops iterating early", async () => {
    let serverSignal: AbortSignal | undefined;
    const transport = createRouterTransport(({ service }) => {
      service(DataService, {
        async *readVolume(_req, ctx) {
          serverSignal = ctx.signal;
          for (let offset = 0n; !ctx.signal.aborted; offset += 4096n) {
            yield { payload: { case: "zero", value: { offset, length: 4096n } } };
            await new Promise((resolve) => setTimeout(resolve, 5));
          }
        },
      });
    });
    for await (const _ of createVdiskClient({ transport }).readVolume("disk1")) break;
    await expect.poll(() => serverSignal?.aborted, { timeout: 2000 }).toBe(true);
  });

  it("writeVolume opens, splits large data into 1 MiB messages, and reports the response", async () => {
    const received: WriteVolumeRequest["payload"][] = [];
    const transport = createRouterTransport(({ service }) => {
      service(DataService, {
        async writeVolume(requests) {
          for await (const r of requests) received.push(r.payload);
          return { writtenBytes: BigInt(3 * MiB), zeroedBytes: 512n, flushedBytes: BigInt(3 * MiB) };
        },
      });
    });
    const result = await createVdiskClient({ transport }).writeVolume(
      "disk1",
      [
        { offset: 0, data: new Uint8Array(2.5 * MiB) },
        { offset: 3 * MiB, length: 512, zero: true },
        { flush: true },
      ],
      { zeroDetection: "unmap" },
    );
    expect(result).toEqual({ writtenBytes: 3 * MiB, zeroedBytes: 512, flushedBytes: 3 * MiB });
    expect(received.map((p) => p.case)).toEqual(["open", "chunk", "chunk", "chunk", "zero", "flush"]);
    expect(received[0]).toMatchObject({ value: { name: "disk1", zeroDetection: 3 } });
    const chunks = received
      .filter((p) => p.case === "chunk")
      .map((p) => [Number(p.value.offset), p.value.data.length]);
    expect(chunks).toEqual([
      [0, MiB],
      [MiB, MiB],
      [2 * MiB, MiB / 2],
    ]);
  });
});

describe("file helpers", () => {
  it("splitZeroRuns finds zero blocks at 64 KiB granularity", () => {
    const buffer = Buffer.alloc(256 * KiB);
    buffer[70 * KiB] = 7;
    const pieces = [...splitZeroRuns(buffer, 1000)].map((p) =>
      "zero" in p ? ["zero", p.offset, p.length] : ["data", p.offset, p.data.length],
    );
    expect(pieces).toEqual([
      ["zero", 1000, 64 * KiB],
      ["data", 1000 + 64 * KiB, 64 * KiB],
      ["zero", 1000 + 128 * KiB, 128 * KiB],
    ]);
  });

  it("uploadFile sends holes as merged zero runs and ends with a flush", async () => {
    const path = join(dir, "upload.img");
    const content = Buffer.alloc(3 * MiB);
    content.fill(0xab, 0, 4096);
    content.fill(0xcd, 3 * MiB - 10);
    await writeFile(path, content);
    const received: WriteVolumeRequest["payload"][] = [];
    const transport = createRouterTransport(({ service }) => {
      service(DataService, {
        async writeVolume(requests) {
          for await (const r of requests) received.push(r.payload);
          return {};
        },
      });
    });
    await createVdiskClient({ transport }).uploadFile("disk1", path);
    const summary = received.map((p) => {
      if (p.case === "chunk") return ["chunk", Number(p.value.offset), p.value.data.length];
      if (p.case === "zero") return ["zero", Number(p.value.offset), Number(p.value.length)];
      return [p.case];
    });
    expect(summary).toEqual([
      ["open"],
      ["chunk", 0, 64 * KiB],
      ["zero", 64 * KiB, 3 * MiB - 128 * KiB],
      ["chunk", 3 * MiB - 64 * KiB, 64 * KiB],
      ["flush"],
    ]);
  });

  it("uploadFile reads ahead yet sends every byte once, in order, up to a tail shorter than a block", async () => {
    const path = join(dir, "upload-dense.img");
    const content = randomBytes(5 * MiB + 12_345);
    await writeFile(path, content);
    const chunks: { offset: number; data: Uint8Array }[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(DataService, {
        async writeVolume(requests) {
          for await (const r of requests)
            if (r.payload.case === "chunk")
              chunks.push({ offset: Number(r.payload.value.offset), data: r.payload.value.data });
          return {};
        },
      });
    });
    await createVdiskClient({ transport }).uploadFile("disk1", path, { sparse: false, offset: 4096 });
    let expected = 4096;
    for (const chunk of chunks) {
      expect(chunk.offset).toBe(expected);
      expected += chunk.data.length;
    }
    expect(expected).toBe(4096 + content.length);
    expect(Buffer.concat(chunks.map((c) => c.data)).equals(content)).toBe(true);
  });

  it("downloadFile writes many chunks concurrently and still lands every byte at its offset", async () => {
    const path = join(dir, "download-dense.img");
    const chunk = 256 * KiB;
    const content = randomBytes(40 * chunk);
    const transport = createRouterTransport(({ service }) => {
      service(DataService, {
        async *readVolume() {
          // Out of order on purpose: offsets, not arrival order, decide where bytes go.
          for (let i = 39; i >= 0; i--)
            yield {
              payload: {
                case: "chunk",
                value: { offset: BigInt(i * chunk), data: content.subarray(i * chunk, (i + 1) * chunk) },
              },
            };
        },
      });
    });
    const result = await createVdiskClient({ transport }).downloadFile("disk1", path);
    expect(result).toEqual({ fileBytes: content.length, dataBytes: content.length });
    expect((await readFile(path)).equals(content)).toBe(true);
  });

  it("uploadFile of a missing file fails with the fs error before any call", async () => {
    let calls = 0;
    const transport = createRouterTransport(({ service }) => {
      service(DataService, {
        async writeVolume() {
          calls++;
          return {};
        },
      });
    });
    await expect(
      createVdiskClient({ transport }).uploadFile("disk1", join(dir, "absent.img")),
    ).rejects.toMatchObject({
      code: "ENOENT",
    });
    expect(calls).toBe(0);
  });

  it("downloadFile writes a sparse file: zero runs become holes", async () => {
    const path = join(dir, "download.img");
    const size = 64 * MiB;
    const transport = createRouterTransport(({ service }) => {
      service(DataService, {
        async *readVolume() {
          yield { payload: { case: "zero", value: { offset: 0n, length: BigInt(32 * MiB) } } };
          yield {
            payload: {
              case: "chunk",
              value: { offset: BigInt(32 * MiB), data: new Uint8Array(4096).fill(9) },
            },
          };
          yield {
            payload: {
              case: "zero",
              value: { offset: BigInt(32 * MiB + 4096), length: BigInt(size - 32 * MiB - 4096) },
            },
          };
        },
      });
    });
    const result = await createVdiskClient({ transport }).downloadFile("disk1", path);
    expect(result).toEqual({ fileBytes: size, dataBytes: 4096 });
    const info = await stat(path);
    expect(info.size).toBe(size);
    expect(info.blocks * 512).toBeLessThan(MiB);
    const bytes = await readFile(path);
    expect(bytes[32 * MiB]).toBe(9);
    expect(bytes[32 * MiB - 1]).toBe(0);
  });

  it("importFile sends the header (with the file size) and then the bytes in order", async () => {
    const path = join(dir, "import.qcow2");
    const content = Buffer.alloc(3 * MiB + 5, 0x11);
    await writeFile(path, content);
    let header: unknown;
    const parts: Buffer[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        async importVolume(requests) {
          for await (const r of requests) {
            if (r.payload.case === "header") header = r.payload.value;
            else if (r.payload.case === "data") parts.push(Buffer.from(r.payload.value));
          }
          return {
            volume: { name: "imported", format: VolumeFormat.QCOW2 },
            receivedBytes: BigInt(content.length),
          };
        },
      });
    });
    const volume = await createVdiskClient({ transport }).importFile(path, {
      name: "imported",
      format: "qcow2",
    });
    expect(volume).toMatchObject({ name: "imported", format: "qcow2" });
    expect(header).toMatchObject({
      name: "imported",
      format: VolumeFormat.QCOW2,
      uploadBytes: BigInt(content.length),
    });
    expect(Buffer.concat(parts).equals(content)).toBe(true);
    expect(parts.every((p) => p.length <= MiB)).toBe(true);
  });

  it("exportFile writes chunks at their offsets, keeps zero runs as holes and sizes the file from the header", async () => {
    const path = join(dir, "export.raw");
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        async *exportVolume(req) {
          expect(req.format).toBe(VolumeFormat.RAW);
          yield {
            payload: {
              case: "header",
              value: {
                format: VolumeFormat.RAW,
                capacityBytes: BigInt(16 * MiB),
                fileBytes: BigInt(16 * MiB),
              },
            },
          };
          yield { payload: { case: "chunk", value: { offset: 0n, data: new Uint8Array([1, 2, 3, 4]) } } };
          yield { payload: { case: "zero", value: { offset: 4n, length: BigInt(8 * MiB - 4) } } };
        },
      });
    });
    const result = await createVdiskClient({ transport }).exportFile("disk1", path);
    expect(result).toEqual({ fileBytes: 16 * MiB, dataBytes: 4 });
    const bytes = await readFile(path);
    expect(bytes.length).toBe(16 * MiB);
    expect([...bytes.subarray(0, 5)]).toEqual([1, 2, 3, 4, 0]);
  });
});
