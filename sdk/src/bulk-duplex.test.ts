import { once } from "node:events";
import { createServer, type Http2Session, type ServerHttp2Stream } from "node:http2";
import type { AddressInfo } from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createVdiskClient } from "./client.js";
import { ReadVolumeResponseSchema, WriteVolumeResponseSchema } from "./gen/vdisk/v1/data_pb.js";
import { MiB } from "./sizes.js";

/**
 * Node's HTTP/2 stops reading its socket while one of its own socket writes is pending. When one
 * connection carries bulk data both ways (downloads and uploads at once) with wide windows, both peers can
 * end up writing into full socket buffers while neither reads: a permanent, idle stall. The client must
 * keep uploads and downloads on separate connections. A bare node:http2 server that sends and takes data
 * as fast as flow control allows makes the collision happen at once on a shared connection.
 */
const STREAM_BYTES = 48 * MiB;
const PIECE = MiB;

const server = createServer({ settings: { initialWindowSize: 8 * MiB } });
const sessions: Http2Session[] = [];
let baseUrl: string;

function frame(message: Uint8Array): Buffer {
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(message.length, 1);
  return Buffer.concat([prefix, message]);
}

async function sendChunks(stream: ServerHttp2Stream): Promise<void> {
  const data = Buffer.alloc(PIECE, 0x5a);
  for (let offset = 0; offset < STREAM_BYTES; offset += PIECE) {
    const message = toBinary(
      ReadVolumeResponseSchema,
      create(ReadVolumeResponseSchema, {
        payload: { case: "chunk", value: { offset: BigInt(offset), data } },
      }),
    );
    if (!stream.write(frame(message))) await once(stream, "drain");
  }
  stream.end();
}

beforeAll(async () => {
  server.on("session", (session) => {
    sessions.push(session);
    session.once("connect", () => session.setLocalWindowSize(32 * MiB));
  });
  server.on("stream", (stream: ServerHttp2Stream, headers) => {
    stream.on("error", () => undefined);
    stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
    stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
    stream.resume();
    if (headers[":path"] === "/vdisk.v1.DataService/ReadVolume") {
      void sendChunks(stream);
    } else {
      stream.on("end", () => {
        const response = create(WriteVolumeResponseSchema, { writtenBytes: BigInt(STREAM_BYTES) });
        stream.write(frame(toBinary(WriteVolumeResponseSchema, response)));
        stream.end();
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(() => {
  // Not awaited: after a stall the wedged socket may never report closed, and the failure is already known.
  for (const session of sessions) session.destroy();
  server.close();
});

/** Bytes moved so far per transfer; the watchdog fails the test when none of them moves for a while. */
const progress = [0, 0, 0, 0];

async function download(client: ReturnType<typeof createVdiskClient>, slot: number): Promise<number> {
  for await (const piece of client.readVolume("down"))
    if ("data" in piece) progress[slot] += piece.data.length;
  return progress[slot] ?? 0;
}

async function* uploadPieces(slot: number) {
  const data = Buffer.alloc(PIECE, 0xa5);
  for (let offset = 0; offset < STREAM_BYTES; offset += PIECE) {
    yield { offset, data };
    progress[slot] = offset + PIECE;
  }
}

/** Rejects when `progress` stays the same for `idleMs` (a stall is idle, not slow). */
function stallWatchdog(idleMs: number): { stalled: Promise<never>; stop(): void } {
  let last = "";
  let idleSince = Date.now();
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    timer = setInterval(() => {
      const now = progress.map((bytes) => Math.floor(bytes / MiB)).join(",");
      if (now !== last) {
        last = now;
        idleSince = Date.now();
      } else if (Date.now() - idleSince > idleMs) {
        reject(new Error(`transfers stalled at [${now}] MiB (down, down, up, up)`));
      }
    }, 200);
  });
  return { stalled, stop: () => clearInterval(timer) };
}

it("runs concurrent bulk downloads and uploads without stalling", { timeout: 60_000 }, async () => {
  const client = createVdiskClient({ baseUrl });
  const watchdog = stallWatchdog(5_000);
  try {
    const results = await Promise.race([
      Promise.all([
        download(client, 0),
        download(client, 1),
        client.writeVolume("up", uploadPieces(2)),
        client.writeVolume("up", uploadPieces(3)),
      ]),
      watchdog.stalled,
    ]);
    expect(results.slice(0, 2)).toEqual([STREAM_BYTES, STREAM_BYTES]);
    expect(results.slice(2).map((r) => (typeof r === "number" ? r : r.writtenBytes))).toEqual([
      STREAM_BYTES,
      STREAM_BYTES,
    ]);
  } finally {
    watchdog.stop();
    client.close();
  }
});
