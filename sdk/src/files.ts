import { createReadStream } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import type { ExportOptions, ImportSpec, VdiskClient } from "./client.js";
import { DownloadFileWriter } from "./download-file.js";
import type { VolumeFormatName, ZeroDetectionName } from "./enums.js";
import { KiB, MiB } from "./sizes.js";
import type { DataPiece, ReadPiece, Volume, WritePiece, WriteResult, ZeroPiece } from "./types.js";
import { UploadBuffers } from "./upload-buffers.js";
import { type PartsPiece, readVolumeParts, writeVolumeWire } from "./wire/data-calls.js";
import { wireChannelsOf } from "./wire/registry.js";

/** First item of an export: facts about the file that follows. */
export interface ExportHeaderPiece {
  /** Always true. */
  header: true;
  /** Format of the file. */
  format: VolumeFormatName | "unspecified";
  /** Size of the guest disk. */
  capacityBytes: number;
  /** Final file length when known in advance (raw: the capacity), else 0. */
  fileBytes: number;
}

/** One item of an export stream: the header, file bytes, or (raw) a zero run to leave as a hole. */
export type ExportPiece = ExportHeaderPiece | DataPiece | ZeroPiece;

/** Options of uploadFile. */
export interface UploadOptions {
  /** Send all-zero 64 KiB blocks as zero runs instead of bytes (default true). */
  sparse?: boolean;
  /** Where in the volume the file's first byte goes (default 0). */
  offset?: number;
  /** What the server does with zero data it still receives (default `"off"`). */
  zeroDetection?: ZeroDetectionName;
  /** Aborts the upload. */
  signal?: AbortSignal;
}

/** Options of downloadFile. */
export interface DownloadOptions {
  /** Aborts the download (the partial file is left in place). */
  signal?: AbortSignal;
}

/** What a download wrote. */
export interface DownloadResult {
  /** Length of the local file. */
  fileBytes: number;
  /** Bytes actually written; the rest are holes. */
  dataBytes: number;
}

/** File read size of uploads. */
const READ_SIZE = MiB;
/** Largest WriteVolume data message of an upload. */
const UPLOAD_SLICE = MiB;
/**
 * Received download chunks are gathered into writes of this size (at offsets that are multiples of it):
 * page-cache writes of 4 MiB measured at about half the system time of 1 MiB ones here (qemu-img writes
 * 2 MiB). Uploads stay at 1 MiB messages: 4 MiB ones raised the server's peak RSS by ~60 MiB per stream.
 */
const DOWNLOAD_WRITE = 4 * MiB;
// Granularity of hole detection: large enough for Buffer.equals to run at memory speed, small enough to
// keep the holes qemu-img and filesystems care about (64 KiB is also the default cluster size).
const ZERO_BLOCK = 64 * KiB;
const ZEROES = Buffer.alloc(ZERO_BLOCK);

function isZeroBlock(block: Buffer): boolean {
  return block.equals(block.length === ZERO_BLOCK ? ZEROES : ZEROES.subarray(0, block.length));
}

/**
 * Splits a buffer into alternating data and zero runs at 64 KiB granularity; neighbouring zero runs are
 * merged by the caller across buffers. @internal
 */
export function* splitZeroRuns(buffer: Buffer, offset: number): Generator<DataPiece | ZeroPiece> {
  let runStart = 0;
  let runIsZero: boolean | undefined;
  for (let at = 0; at < buffer.length; at += ZERO_BLOCK) {
    const block = buffer.subarray(at, Math.min(buffer.length, at + ZERO_BLOCK));
    const zero = isZeroBlock(block);
    if (runIsZero !== undefined && zero !== runIsZero) {
      yield runIsZero
        ? { offset: offset + runStart, length: at - runStart, zero: true }
        : { offset: offset + runStart, data: buffer.subarray(runStart, at) };
      runStart = at;
    }
    runIsZero = zero;
  }
  if (runIsZero !== undefined) {
    const length = buffer.length - runStart;
    yield runIsZero
      ? { offset: offset + runStart, length, zero: true }
      : { offset: offset + runStart, data: buffer.subarray(runStart) };
  }
}

/** Reads of the local file kept in flight ahead of the one being sent (uploads). */
const READS_AHEAD = 2;
/** Writes of the local file kept in flight while the next pieces are received (downloads). */
const WRITES_IN_FLIGHT = 4;

interface PendingRead {
  position: number;
  result: Promise<Buffer>;
}

/**
 * Reads the file in READ_SIZE blocks with up to READS_AHEAD more reads running, so the disk read of the
 * next block overlaps the sending of this one. A short read before the end (rare for regular files) drops
 * the reads planned past it and resumes from where it stopped. Yields nothing more at end of file.
 */
async function* fileBlocks(
  file: FileHandle,
  buffers: UploadBuffers | undefined,
): AsyncGenerator<{ position: number; block: Buffer }> {
  const queue: PendingRead[] = [];
  let nextPosition = 0;
  const plan = () => {
    while (queue.length <= READS_AHEAD) {
      const position = nextPosition;
      // A buffer of its own per read: the pieces yielded from it are still being sent while we read the
      // next one (pooled buffers come back only once their bytes are on the socket).
      const buffer = buffers?.take() ?? Buffer.allocUnsafe(READ_SIZE);
      const result = file
        .read(buffer, 0, READ_SIZE, position)
        .then(({ bytesRead }) => buffer.subarray(0, bytesRead));
      result.catch(() => undefined); // rethrown when its turn comes; dropped if the reader stops first
      queue.push({ position, result });
      nextPosition += READ_SIZE;
    }
  };
  try {
    for (;;) {
      plan();
      const head = queue.shift() as PendingRead;
      const block = await head.result;
      if (block.length === 0) return;
      if (block.length < READ_SIZE) {
        await Promise.allSettled(queue.map((read) => read.result));
        queue.length = 0;
        nextPosition = head.position + block.length;
      }
      yield { position: head.position, block };
      buffers?.done(block);
    }
  } finally {
    // The caller closes the file after this generator: no read may still be running then.
    await Promise.allSettled(queue.map((read) => read.result));
  }
}

/** Reads an open local file as write pieces (zero runs merged across reads), ending with a flush. The caller closes the file. @internal */
export async function* filePieces(
  file: FileHandle,
  baseOffset: number,
  sparse: boolean,
  buffers?: UploadBuffers,
): AsyncGenerator<WritePiece> {
  let pendingZero: ZeroPiece | undefined;
  for await (const { position, block } of fileBlocks(file, buffers)) {
    const pieces: Iterable<DataPiece | ZeroPiece> = sparse
      ? splitZeroRuns(block, baseOffset + position)
      : [{ offset: baseOffset + position, data: block }];
    for (const piece of pieces) {
      if ("zero" in piece) {
        if (pendingZero) pendingZero.length += piece.length;
        else pendingZero = { ...piece };
        continue;
      }
      if (pendingZero) {
        yield pendingZero;
        pendingZero = undefined;
      }
      buffers?.lend(piece.data);
      yield piece;
    }
  }
  if (pendingZero) yield pendingZero;
  yield { flush: true };
}

/** Writes a local file into an existing volume; all-zero blocks travel as zero runs. @internal */
export async function uploadFile(
  client: VdiskClient,
  volume: string,
  path: string,
  options?: UploadOptions,
): Promise<WriteResult> {
  // Opened here, not inside the stream, so a missing or unreadable file fails with its own fs error.
  const file = await open(path, "r");
  try {
    const wire = wireChannelsOf(client);
    if (wire !== undefined) {
      // Read buffers are lent to the connection and reused once written out, so the pieces go out uncopied.
      const buffers = new UploadBuffers(READ_SIZE);
      return await writeVolumeWire(
        wire.uploads,
        volume,
        filePieces(file, options?.offset ?? 0, options?.sparse ?? true, buffers),
        {
          zeroDetection: options?.zeroDetection ?? "off",
          signal: options?.signal,
          slice: UPLOAD_SLICE,
          ownsBuffers: true,
          onSent: (view) => buffers.returned(view),
        },
      );
    }
    return await client.writeVolume(volume, filePieces(file, options?.offset ?? 0, options?.sparse ?? true), {
      ...(options?.zeroDetection === undefined ? {} : { zeroDetection: options.zeroDetection }),
      ...(options?.signal === undefined ? {} : { signal: options.signal }),
    });
  } finally {
    await file.close();
  }
}

/**
 * Writes pieces into a fresh local file; zero runs stay holes, and the file is sized to `minLength` at
 * least. Up to WRITES_IN_FLIGHT writes run while the next pieces arrive; pieces never overlap, so their
 * order on disk does not matter, and the bound keeps a slow disk pushing back on the stream.
 */
async function writeSparseFile(
  path: string,
  pieces: AsyncIterable<ReadPiece | PartsPiece>,
  minLength: () => number,
): Promise<DownloadResult> {
  const file = await DownloadFileWriter.create(path, {
    maxConcurrentWrites: WRITES_IN_FLIGHT,
    stagingBytes: DOWNLOAD_WRITE,
  });
  const inFlight = new Set<Promise<void>>();
  // Contiguous received chunks waiting to be written together (see DOWNLOAD_WRITE).
  let batch: Buffer[] = [];
  let batchStart = 0;
  let batchLength = 0;
  const start = async (written: Promise<void>) => {
    const write: Promise<void> = written.then(() => {
      inFlight.delete(write);
    });
    write.catch(() => undefined); // awaited below; this only keeps a failure from counting as unhandled
    inFlight.add(write);
    if (inFlight.size >= WRITES_IN_FLIGHT) await Promise.race(inFlight);
  };
  const flushBatch = async () => {
    if (batchLength === 0) return;
    const parts = batch;
    const at = batchStart;
    const length = batchLength;
    batch = [];
    batchLength = 0;
    await start(file.write(parts, at, length));
  };
  try {
    let end = 0;
    let dataBytes = 0;
    for await (const piece of pieces) {
      if ("zero" in piece) {
        await flushBatch();
        end = Math.max(end, piece.offset + piece.length);
        continue;
      }
      const length = "parts" in piece ? piece.length : piece.data.length;
      if ("parts" in piece) {
        if (batchLength > 0 && piece.offset !== batchStart + batchLength) await flushBatch();
        if (batchLength === 0) batchStart = piece.offset;
        for (const part of piece.parts) batch.push(part);
        batchLength += length;
        if ((batchStart + batchLength) % DOWNLOAD_WRITE === 0 || batchLength >= DOWNLOAD_WRITE)
          await flushBatch();
      } else {
        await start(file.write([piece.data], piece.offset, piece.data.length));
      }
      dataBytes += length;
      end = Math.max(end, piece.offset + length);
    }
    await flushBatch();
    await Promise.all(inFlight);
    // Extending with truncate leaves the tail as a hole instead of writing zeros.
    const fileBytes = Math.max(end, minLength());
    await file.finish(fileBytes);
    return { fileBytes, dataBytes };
  } finally {
    await Promise.allSettled(inFlight);
    await file.close();
  }
}

/** Downloads a whole volume's guest data into a sparse local file. @internal */
export function downloadFile(
  client: VdiskClient,
  volume: string,
  path: string,
  options?: DownloadOptions,
): Promise<DownloadResult> {
  const wire = wireChannelsOf(client);
  if (wire !== undefined) {
    // The chunks stay in the pieces they arrived in and go to the file with writev: no copy on the way.
    const request = { name: volume, offset: 0, length: 0, chunkSize: 0, sparse: true };
    return writeSparseFile(path, readVolumeParts(wire.downloads, request, options?.signal), () => 0);
  }
  const pieces = client.readVolume(volume, {
    sparse: true,
    ...(options?.signal === undefined ? {} : { signal: options.signal }),
  });
  return writeSparseFile(path, pieces, () => 0);
}

/** Uploads a local image file as a new volume (ImportVolume). @internal */
export async function importFile(
  client: VdiskClient,
  path: string,
  spec: ImportSpec,
  options?: { signal?: AbortSignal; requestId?: string },
): Promise<Volume> {
  const handle = await open(path, "r");
  let size: number;
  try {
    size = (await handle.stat()).size;
  } finally {
    await handle.close();
  }
  const stream = createReadStream(path, { highWaterMark: READ_SIZE });
  try {
    return await client.importVolume(
      { uploadBytes: size, ...spec },
      stream as AsyncIterable<Buffer>,
      options,
    );
  } finally {
    stream.destroy();
  }
}

/** Downloads a volume as an image file (ExportVolume); raw exports are written sparse. @internal */
export async function exportFile(
  client: VdiskClient,
  volume: string,
  path: string,
  options?: ExportOptions,
): Promise<DownloadResult> {
  let fileBytes = 0;
  async function* filePieces(): AsyncGenerator<ReadPiece> {
    for await (const piece of client.exportVolume(volume, options)) {
      if ("header" in piece) fileBytes = piece.fileBytes;
      else yield piece;
    }
  }
  return writeSparseFile(path, filePieces(), () => fileBytes);
}
