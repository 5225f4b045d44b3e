import type { Server } from "@grpc/grpc-js";
import {
  type BlockImage,
  EngineError,
  flushImage,
  mapExtents,
  readAt,
  writeAt,
  writeZeroesAt,
  type ZeroDetection,
} from "@vdisk/engine";
import type { VolumeRecord } from "../catalog/catalog.js";
import {
  type DataServiceServer,
  DataServiceService,
  type ReadVolumeRequest,
  type ReadVolumeResponse,
  type WriteVolumeRequest,
  type WriteVolumeResponse,
} from "../gen/vdisk/v1/data.js";
import { type CallContext, clientStream, serverStream } from "../rpc/adapt.js";
import { toBigint, toNumber, zeroDetectionFromWire } from "../rpc/convert.js";
import { markVolumeIfBroken, requireReadyVolume, type ServiceContext, useVolume } from "./context.js";
import { resolveRange } from "./ranges.js";

const DEFAULT_CHUNK = 1024 * 1024;
/** Largest data message; with framing it stays inside the 8 MiB message limit set on the server. */
export const MAX_CHUNK = 4 * 1024 * 1024;

export class DataService {
  constructor(private readonly ctx: ServiceContext) {}

  addToServer(server: Pick<Server, "addService">): void {
    const env = this.ctx.adapter;
    const impl: DataServiceServer = {
      readVolume: serverStream(env, "ReadVolume", (req: ReadVolumeRequest, call) =>
        this.readVolume(req, call),
      ),
      writeVolume: clientStream(env, "WriteVolume", (reqs: AsyncIterable<WriteVolumeRequest>, call) =>
        this.writeVolume(reqs, call),
      ),
    };
    server.addService(DataServiceService, impl);
  }

  async *readVolume(req: ReadVolumeRequest, call: CallContext): AsyncGenerator<ReadVolumeResponse> {
    const volume = requireReadyVolume(this.ctx.catalog, req.name);
    if (req.chunkSize > MAX_CHUNK) {
      throw new EngineError("INVALID_ARGUMENT", `chunk_size must be at most ${MAX_CHUNK}`, {
        reason: "INVALID_CHUNK_SIZE",
        metadata: { field: "chunk_size" },
      });
    }
    const chunk = req.chunkSize === 0 ? DEFAULT_CHUNK : req.chunkSize;
    const release = useVolume(this.ctx, volume);
    try {
      const image = await this.ctx.images.get(volume);
      const { start, end } = resolveRange(image, req.offset, req.length, false);
      const opts = { signal: call.signal };
      if (!req.sparse) {
        yield* readChunks(image, start, end, chunk, call.signal);
        return;
      }
      for await (const extent of mapExtents(image, { start, length: end - start, ...opts })) {
        if (extent.zero) {
          yield {
            payload: {
              $case: "zero",
              zero: { offset: toBigint(extent.start), length: toBigint(extent.length) },
            },
          };
        } else {
          yield* readChunks(image, extent.start, extent.start + extent.length, chunk, call.signal);
        }
      }
    } finally {
      release();
    }
  }

  async writeVolume(
    requests: AsyncIterable<WriteVolumeRequest>,
    call: CallContext,
  ): Promise<WriteVolumeResponse> {
    let image: BlockImage | undefined;
    let volume: VolumeRecord | undefined;
    let release: (() => void) | undefined;
    let detection: ZeroDetection = "off";
    let written = 0;
    let zeroed = 0;
    let flushed = 0;
    const opened = (): BlockImage => {
      if (image === undefined)
        throw new EngineError("INVALID_ARGUMENT", "the first message of WriteVolume must be `open`", {
          reason: "STREAM_NOT_OPENED",
        });
      return image;
    };
    try {
      for await (const message of requests) {
        const payload = message.payload;
        switch (payload?.$case) {
          case "open": {
            if (image !== undefined)
              throw new EngineError("INVALID_ARGUMENT", "`open` may only be the first message", {
                reason: "STREAM_ALREADY_OPEN",
              });
            detection = zeroDetectionFromWire(payload.open.zeroDetection);
            volume = requireReadyVolume(this.ctx.catalog, payload.open.name);
            release = useVolume(this.ctx, volume);
            image = await this.ctx.images.get(volume);
            break;
          }
          case "chunk": {
            const img = opened();
            const offset = toNumber(payload.chunk.offset, "chunk.offset");
            await writeAt(img, offset, payload.chunk.data, { zeroDetection: detection, signal: call.signal });
            written += payload.chunk.data.length;
            break;
          }
          case "zero": {
            const img = opened();
            const offset = toNumber(payload.zero.offset, "zero.offset");
            const length = toNumber(payload.zero.length, "zero.length");
            await writeZeroesAt(img, offset, length, {
              mayUnmap: detection === "unmap",
              signal: call.signal,
            });
            zeroed += length;
            break;
          }
          case "flush":
            await flushImage(opened(), { signal: call.signal });
            flushed = written + zeroed;
            break;
          default:
            throw new EngineError("INVALID_ARGUMENT", "empty WriteVolume message", {
              reason: "EMPTY_MESSAGE",
            });
        }
      }
      const img = opened();
      // The end of the stream is a durability point: the response promises what it reports as flushed.
      await flushImage(img, { signal: call.signal });
      flushed = written + zeroed;
      return {
        writtenBytes: toBigint(written),
        zeroedBytes: toBigint(zeroed),
        flushedBytes: toBigint(flushed),
      };
    } catch (err) {
      if (volume !== undefined) await markVolumeIfBroken(this.ctx, volume, err);
      throw err;
    } finally {
      release?.();
    }
  }
}

async function* readChunks(
  image: BlockImage,
  start: number,
  end: number,
  chunk: number,
  signal: AbortSignal,
): AsyncGenerator<ReadVolumeResponse> {
  for (let pos = start; pos < end; pos += chunk) {
    const length = Math.min(chunk, end - pos);
    const bytes = await readAt(image, pos, length, { signal });
    yield {
      payload: {
        $case: "chunk",
        chunk: { offset: toBigint(pos), data: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) },
      },
    };
  }
}
