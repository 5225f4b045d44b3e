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
import {
  allocateChunkResponse,
  deserializeWriteVolumeRequest,
  readVolumeResponseWritten,
  serializeReadVolumeResponse,
} from "./data-codec.js";
import { resolveRange } from "./ranges.js";
import { WriteWindow } from "./write-window.js";

const DEFAULT_CHUNK = 1024 * 1024;
/** Largest data message; with framing it stays inside the 8 MiB message limit set on the server. */
export const MAX_CHUNK = 4 * 1024 * 1024;
/**
 * Bytes a ReadVolume keeps in flight from disk while earlier chunks are being sent: enough to hide a
 * threadpool round trip behind the network write, small enough that four streams stay far below the
 * server's memory bar (the HTTP/2 window and grpc-js's write buffer hold the rest).
 */
const READ_AHEAD_BYTES = 4 * 1024 * 1024;
const MIN_READ_AHEAD = 2;
/** Chunk writes a WriteVolume keeps running while it decodes the next messages (see WriteWindow). */
const WRITES_IN_FLIGHT = 4;

/**
 * The generated service definition with byte-stream codecs that do not copy chunk payloads
 * (see data-codec.ts); every other field is the generated one.
 */
const DataServiceDefinition = {
  ...DataServiceService,
  readVolume: { ...DataServiceService.readVolume, responseSerialize: serializeReadVolumeResponse },
  writeVolume: { ...DataServiceService.writeVolume, requestDeserialize: deserializeWriteVolumeRequest },
} as const;

export class DataService {
  constructor(private readonly ctx: ServiceContext) {}

  addToServer(server: Pick<Server, "addService">): void {
    const env = this.ctx.adapter;
    const impl: DataServiceServer = {
      readVolume: serverStream(
        env,
        "ReadVolume",
        (req: ReadVolumeRequest, call) => this.readVolume(req, call),
        { afterWrite: readVolumeResponseWritten },
      ),
      writeVolume: clientStream(env, "WriteVolume", (reqs: AsyncIterable<WriteVolumeRequest>, call) =>
        this.writeVolume(reqs, call),
      ),
    };
    server.addService(DataServiceDefinition, impl);
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
      yield* readAhead(readPlan(image, start, end, chunk, req.sparse, call.signal), readDepth(chunk));
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
    const writes = new WriteWindow(WRITES_IN_FLIGHT);
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
            const data = payload.chunk.data;
            await writes.add(offset, data.length, () =>
              writeAt(img, offset, data, { zeroDetection: detection, signal: call.signal }),
            );
            written += data.length;
            break;
          }
          case "zero": {
            const img = opened();
            const offset = toNumber(payload.zero.offset, "zero.offset");
            const length = toNumber(payload.zero.length, "zero.length");
            await writes.drain();
            await writeZeroesAt(img, offset, length, {
              mayUnmap: detection === "unmap",
              signal: call.signal,
            });
            zeroed += length;
            break;
          }
          case "flush":
            await writes.drain();
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
      await writes.drain();
      // The end of the stream is a durability point: the response promises what it reports as flushed.
      await flushImage(img, { signal: call.signal });
      flushed = written + zeroed;
      return {
        writtenBytes: toBigint(written),
        zeroedBytes: toBigint(zeroed),
        flushedBytes: toBigint(flushed),
      };
    } catch (err) {
      // Writes still running finish first: the volume is released (and may be closed) only after them.
      await writes.settle();
      if (volume !== undefined) await markVolumeIfBroken(this.ctx, volume, err);
      throw err;
    } finally {
      release?.();
    }
  }
}

type PendingResponse = () => Promise<ReadVolumeResponse>;

function readDepth(chunk: number): number {
  return Math.max(MIN_READ_AHEAD, Math.floor(READ_AHEAD_BYTES / chunk));
}

/**
 * The responses of a read, in order, as deferred reads: zero runs (sparse) cost nothing, data chunks are
 * read from disk when readAhead starts them.
 */
async function* readPlan(
  image: BlockImage,
  start: number,
  end: number,
  chunk: number,
  sparse: boolean,
  signal: AbortSignal,
): AsyncGenerator<PendingResponse> {
  if (!sparse) {
    yield* chunkReads(image, start, end, chunk, signal);
    return;
  }
  for await (const extent of mapExtents(image, { start, length: end - start, signal })) {
    if (extent.zero) {
      const response: ReadVolumeResponse = {
        payload: { $case: "zero", zero: { offset: toBigint(extent.start), length: toBigint(extent.length) } },
      };
      yield () => Promise.resolve(response);
    } else {
      yield* chunkReads(image, extent.start, extent.start + extent.length, chunk, signal);
    }
  }
}

function* chunkReads(
  image: BlockImage,
  start: number,
  end: number,
  chunk: number,
  signal: AbortSignal,
): Generator<PendingResponse> {
  for (let pos = start; pos < end; pos += chunk) {
    const offset = pos;
    const length = Math.min(chunk, end - pos);
    yield async () => {
      // Read straight into the encoded message: the payload is never copied on its way to grpc-js.
      const { response, data } = allocateChunkResponse(offset, length);
      await readAt(image, offset, data, { signal });
      return response;
    };
  }
}

/**
 * Runs up to `depth` reads ahead of the consumer and yields their results in order, so the disk read of
 * chunk N+1.. overlaps the network write of chunk N. Reads start only as the consumer pulls, so a slow
 * client holds at most `depth` chunks here (backpressure reaches the disk). Reads still running when the
 * consumer stops are awaited, so none outlives the volume's use.
 */
async function* readAhead(
  plan: AsyncIterable<PendingResponse>,
  depth: number,
): AsyncGenerator<ReadVolumeResponse> {
  const inFlight: Promise<ReadVolumeResponse>[] = [];
  const iterator = plan[Symbol.asyncIterator]();
  let planDone = false;
  const fill = async () => {
    while (!planDone && inFlight.length < depth) {
      const next = await iterator.next();
      if (next.done === true) {
        planDone = true;
        break;
      }
      const started = next.value();
      // Marked handled: a failure is rethrown when its turn comes, or dropped if the consumer left first.
      started.catch(() => undefined);
      inFlight.push(started);
    }
  };
  try {
    for (;;) {
      await fill();
      const head = inFlight.shift();
      if (head === undefined) return;
      yield await head;
    }
  } finally {
    await Promise.allSettled(inFlight);
    if (!planDone) await iterator.return?.();
  }
}
