import { once } from "node:events";
import { constants, createServer, type Http2Session, type ServerHttp2Stream } from "node:http2";
import type { AddressInfo } from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createVdiskClient } from "../client.js";
import { VdiskError } from "../errors.js";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";
import {
  ReadVolumeRequestSchema,
  ReadVolumeResponseSchema,
  WriteVolumeRequestSchema,
  WriteVolumeResponseSchema,
} from "../gen/vdisk/v1/data_pb.js";
import { MiB } from "../sizes.js";
import { Deframer } from "./deframer.js";

/**
 * The wire data path against a bare node:http2 server that plays the gRPC server: what the client puts on
 * the wire, how it reads statuses, and how it cancels. Each test installs the handler it needs.
 */
type Handler = (stream: ServerHttp2Stream, headers: Record<string, string | string[] | undefined>) => void;
let handler: Handler;
const server = createServer({ settings: { initialWindowSize: 8 * MiB } });
const sessions: Http2Session[] = [];
let baseUrl: string;

function frame(message: Uint8Array, flags = 0): Buffer {
  const prefix = Buffer.alloc(5);
  prefix[0] = flags;
  prefix.writeUInt32BE(message.length, 1);
  return Buffer.concat([prefix, message]);
}

function chunk(offset: number, data: Uint8Array): Buffer {
  return frame(
    toBinary(
      ReadVolumeResponseSchema,
      create(ReadVolumeResponseSchema, {
        payload: { case: "chunk", value: { offset: BigInt(offset), data } },
      }),
    ),
  );
}

function respond(stream: ServerHttp2Stream, trailers: Record<string, string>): void {
  stream.respond({ ":status": 200, "content-type": "application/grpc+proto" }, { waitForTrailers: true });
  stream.on("wantTrailers", () => stream.sendTrailers(trailers));
}

beforeAll(async () => {
  server.on("session", (session) => sessions.push(session));
  server.on("stream", (stream, headers) => {
    stream.on("error", () => undefined);
    handler(stream, headers);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  for (const session of sessions) session.destroy();
  await new Promise((resolve) => server.close(resolve));
});

beforeEach(() => {
  handler = (stream) => stream.close(constants.NGHTTP2_INTERNAL_ERROR);
});

async function readAll(client: ReturnType<typeof createVdiskClient>) {
  const pieces: unknown[] = [];
  for await (const piece of client.readVolume("disk")) pieces.push(piece);
  return pieces;
}

async function failure(promise: Promise<unknown>): Promise<VdiskError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(VdiskError);
    return err as VdiskError;
  }
  throw new Error("expected a failure");
}

describe("Deframer", () => {
  it("splits messages across pieces and refuses oversized or compressed ones", () => {
    const messages: Buffer[] = [];
    const deframer = new Deframer(100);
    const body = Buffer.concat([
      frame(Buffer.from("hello")),
      frame(Buffer.alloc(0)),
      frame(Buffer.from("x".repeat(100))),
    ]);
    for (let at = 0; at < body.length; at += 3)
      deframer.push(body.subarray(at, at + 3), (m) => messages.push(Buffer.concat(m.parts)));
    expect(messages.map((m) => m.toString())).toEqual(["hello", "", "x".repeat(100)]);
    expect(deframer.partial).toBe(false);
    deframer.push(Buffer.from([0, 0]), () => undefined);
    expect(deframer.partial).toBe(true);
    expect(() => new Deframer(100).push(frame(Buffer.alloc(101)), () => undefined)).toThrow(
      expect.objectContaining({ code: "resource_exhausted" }),
    );
    expect(() => new Deframer(100).push(frame(Buffer.alloc(1), 1), () => undefined)).toThrow(
      expect.objectContaining({ code: "internal" }),
    );
  });
});

describe("ReadVolume over the wire", () => {
  it("sends a gRPC request with the token and wide windows, and yields chunks and zero runs", async () => {
    let seen: Record<string, string | string[] | undefined> = {};
    let request: unknown;
    handler = (stream, headers) => {
      seen = headers;
      const body: Buffer[] = [];
      stream.on("data", (d: Buffer) => body.push(d));
      stream.on("end", () => {
        request = fromBinary(ReadVolumeRequestSchema, Buffer.concat(body).subarray(5));
        respond(stream, { "grpc-status": "0" });
        stream.write(chunk(0, Buffer.alloc(3 * MiB, 7)));
        stream.write(
          frame(
            toBinary(
              ReadVolumeResponseSchema,
              create(ReadVolumeResponseSchema, {
                payload: { case: "zero", value: { offset: BigInt(3 * MiB), length: 5n } },
              }),
            ),
          ),
        );
        stream.end();
      });
    };
    const client = createVdiskClient({ baseUrl, token: "s3cret" });
    const pieces = (await readAll(client)) as Array<{ offset: number; data?: Uint8Array; length?: number }>;
    client.close();
    expect(seen[":path"]).toBe("/vdisk.v1.DataService/ReadVolume");
    expect(seen.authorization).toBe("Bearer s3cret");
    expect(seen["content-type"]).toBe("application/grpc+proto");
    expect(seen.te).toBe("trailers");
    expect(request).toMatchObject({ name: "disk", sparse: true, offset: 0n, length: 0n });
    expect(pieces).toHaveLength(2);
    expect(pieces[0]?.offset).toBe(0);
    expect(Buffer.from(pieces[0]?.data ?? []).equals(Buffer.alloc(3 * MiB, 7))).toBe(true);
    expect(pieces[1]).toEqual({ offset: 3 * MiB, length: 5, zero: true });
    const session = sessions.at(-1);
    expect(session?.remoteSettings.initialWindowSize).toBe(4 * MiB);
    expect(session?.remoteSettings.maxFrameSize).toBe(2 ** 24 - 1);
  });

  it("maps an error status with ErrorInfo details, after the messages sent before it", async () => {
    const status = create(StatusSchema, {
      code: 5,
      message: "volume disk not found",
      details: [
        anyPack(
          ErrorInfoSchema,
          create(ErrorInfoSchema, {
            reason: "VOLUME_NOT_FOUND",
            domain: "vdisk.dev",
            metadata: { volume: "disk" },
          }),
        ),
      ],
    });
    handler = (stream) => {
      respond(stream, {
        "grpc-status": "5",
        "grpc-message": encodeURIComponent("volume disk not found"),
        "grpc-status-details-bin": Buffer.from(toBinary(StatusSchema, status)).toString("base64"),
      });
      stream.end(chunk(0, Buffer.from("abc")));
    };
    const client = createVdiskClient({ baseUrl });
    const pieces: unknown[] = [];
    const error = await failure(
      (async () => {
        for await (const piece of client.readVolume("disk")) pieces.push(piece);
      })(),
    );
    client.close();
    expect(pieces).toHaveLength(1);
    expect(error).toMatchObject({
      code: "not_found",
      message: "volume disk not found",
      reason: "VOLUME_NOT_FOUND",
      domain: "vdisk.dev",
      metadata: { volume: "disk" },
    });
  });

  it("reads a trailers-only response", async () => {
    handler = (stream) => {
      stream.respond(
        {
          ":status": 200,
          "content-type": "application/grpc",
          "grpc-status": "16",
          "grpc-message": "no token",
        },
        { endStream: true },
      );
    };
    const client = createVdiskClient({ baseUrl });
    expect(await failure(readAll(client))).toMatchObject({ code: "unauthenticated", message: "no token" });
    client.close();
  });

  it.each([
    [
      "a missing status",
      (s: ServerHttp2Stream) => {
        s.respond({ ":status": 200, "content-type": "application/grpc" });
        s.end(chunk(0, Buffer.from("a")));
      },
      "internal",
    ],
    [
      "an HTTP error",
      (s: ServerHttp2Stream) => {
        s.respond({ ":status": 503 }, { endStream: true });
      },
      "unavailable",
    ],
    ["a stream reset", (s: ServerHttp2Stream) => s.close(constants.NGHTTP2_REFUSED_STREAM), "unavailable"],
    [
      "a garbage message",
      (s: ServerHttp2Stream) => {
        respond(s, { "grpc-status": "0" });
        s.end(frame(Buffer.from([0x0a, 0x7f, 0x01])));
      },
      "internal",
    ],
    [
      "a body cut inside a message",
      (s: ServerHttp2Stream) => {
        respond(s, { "grpc-status": "0" });
        s.end(chunk(0, Buffer.alloc(100)).subarray(0, 50));
      },
      "internal",
    ],
    [
      "an oversized message",
      (s: ServerHttp2Stream) => {
        respond(s, { "grpc-status": "0" });
        const prefix = Buffer.alloc(5);
        prefix.writeUInt32BE(64 * MiB, 1);
        s.end(prefix);
      },
      "resource_exhausted",
    ],
  ])("turns %s into a VdiskError", async (_what, serve, code) => {
    handler = serve;
    const client = createVdiskClient({ baseUrl });
    expect(await failure(readAll(client))).toMatchObject({ code });
    client.close();
  });

  it("cancels the stream when the loop stops early or the signal aborts", async () => {
    const resets: number[] = [];
    handler = (stream) => {
      respond(stream, { "grpc-status": "0" });
      stream.on("close", () => resets.push(stream.rstCode));
      const pump = async () => {
        for (let i = 0; i < 1000 && !stream.closed; i++) {
          if (!stream.write(chunk(i * MiB, Buffer.alloc(MiB))))
            await once(stream, "drain").catch(() => undefined);
        }
      };
      void pump();
    };
    const client = createVdiskClient({ baseUrl });
    for await (const _piece of client.readVolume("disk")) break;
    const abort = new AbortController();
    let count = 0;
    const error = await failure(
      (async () => {
        for await (const _piece of client.readVolume("disk", { signal: abort.signal })) {
          if (++count === 2) abort.abort();
        }
      })(),
    );
    expect(error.code).toBe("canceled");
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(resets).toEqual([constants.NGHTTP2_CANCEL, constants.NGHTTP2_CANCEL]);
    client.close();
  });

  it("fails with unavailable when nothing listens", async () => {
    const client = createVdiskClient({ baseUrl: "http://127.0.0.1:1" });
    expect(await failure(readAll(client))).toMatchObject({ code: "unavailable" });
    client.close();
  });
});

describe("WriteVolume over the wire", () => {
  it("sends open, chunks (split at 1 MiB), zero runs and flushes, and returns the counters", async () => {
    const received: Array<{ case: string | undefined; offset?: bigint; length?: number }> = [];
    let total = Buffer.alloc(0);
    handler = (stream) => {
      const body: Buffer[] = [];
      stream.on("data", (d: Buffer) => body.push(d));
      stream.on("end", () => {
        let bytes = Buffer.concat(body);
        while (bytes.length > 0) {
          const length = bytes.readUInt32BE(1);
          const message = fromBinary(WriteVolumeRequestSchema, bytes.subarray(5, 5 + length));
          const p = message.payload;
          if (p.case === "chunk") {
            received.push({ case: p.case, offset: p.value.offset, length: p.value.data.length });
            total = Buffer.concat([total, p.value.data]);
          } else received.push({ case: p.case });
          bytes = bytes.subarray(5 + length);
        }
        respond(stream, { "grpc-status": "0" });
        stream.end(
          frame(
            toBinary(
              WriteVolumeResponseSchema,
              create(WriteVolumeResponseSchema, { writtenBytes: 7n, zeroedBytes: 8n, flushedBytes: 15n }),
            ),
          ),
        );
      });
    };
    const client = createVdiskClient({ baseUrl });
    const data = Buffer.alloc(MiB + 10, 3);
    const result = await client.writeVolume("disk", [
      { offset: 0, data },
      { offset: 2 * MiB, length: 4096, zero: true },
      { flush: true },
    ]);
    client.close();
    expect(result).toEqual({ writtenBytes: 7, zeroedBytes: 8, flushedBytes: 15 });
    expect(received).toEqual([
      { case: "open" },
      { case: "chunk", offset: 0n, length: MiB },
      { case: "chunk", offset: BigInt(MiB), length: 10 },
      { case: "zero" },
      { case: "flush" },
    ]);
    expect(total.equals(data)).toBe(true);
  });

  it("reports the server's status when it fails the call while data is still being sent", async () => {
    handler = (stream) => {
      stream.once("data", () => {
        stream.respond(
          {
            ":status": 200,
            "content-type": "application/grpc",
            "grpc-status": "9",
            "grpc-message": "volume busy",
          },
          { endStream: true },
        );
      });
    };
    const client = createVdiskClient({ baseUrl });
    async function* endless() {
      for (let i = 0; i < 10_000; i++) yield { offset: i * MiB, data: Buffer.alloc(MiB) };
    }
    expect(await failure(client.writeVolume("disk", endless()))).toMatchObject({
      code: "failed_precondition",
      message: "volume busy",
    });
    client.close();
  });
});
