import { createReadStream } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import type { ExportOptions, ImportSpec, VdiskClient } from "./client.js";
import type { VolumeFormatName, ZeroDetectionName } from "./enums.js";
import { KiB, MiB } from "./sizes.js";
import type { DataPiece, ReadPiece, Volume, WritePiece, WriteResult, ZeroPiece } from "./types.js";

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

const READ_SIZE = MiB;
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

/** Reads an open local file as write pieces (zero runs merged across reads), ending with a flush. The caller closes the file. @internal */
export async function* filePieces(
  file: FileHandle,
  baseOffset: number,
  sparse: boolean,
): AsyncGenerator<WritePiece> {
  let pendingZero: ZeroPiece | undefined;
  for (let position = 0; ; ) {
    // A fresh buffer per read: the pieces yielded from it are still being sent while we read the next one.
    const buffer = Buffer.allocUnsafe(READ_SIZE);
    const { bytesRead } = await file.read(buffer, 0, READ_SIZE, position);
    if (bytesRead === 0) break;
    const chunk = buffer.subarray(0, bytesRead);
    const pieces: Iterable<DataPiece | ZeroPiece> = sparse
      ? splitZeroRuns(chunk, baseOffset + position)
      : [{ offset: baseOffset + position, data: chunk }];
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
      yield piece;
    }
    position += bytesRead;
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
    return await client.writeVolume(volume, filePieces(file, options?.offset ?? 0, options?.sparse ?? true), {
      ...(options?.zeroDetection === undefined ? {} : { zeroDetection: options.zeroDetection }),
      ...(options?.signal === undefined ? {} : { signal: options.signal }),
    });
  } finally {
    await file.close();
  }
}

/** Writes pieces into a fresh local file; zero runs stay holes, and the file is sized to `minLength` at least. */
async function writeSparseFile(
  path: string,
  pieces: AsyncIterable<ReadPiece>,
  minLength: () => number,
): Promise<DownloadResult> {
  const file = await open(path, "w");
  try {
    let end = 0;
    let dataBytes = 0;
    for await (const piece of pieces) {
      if ("zero" in piece) {
        end = Math.max(end, piece.offset + piece.length);
        continue;
      }
      let written = 0;
      while (written < piece.data.length) {
        const { bytesWritten } = await file.write(
          piece.data,
          written,
          piece.data.length - written,
          piece.offset + written,
        );
        written += bytesWritten;
      }
      dataBytes += piece.data.length;
      end = Math.max(end, piece.offset + piece.data.length);
    }
    // Extending with truncate leaves the tail as a hole instead of writing zeros.
    const fileBytes = Math.max(end, minLength());
    await file.truncate(fileBytes);
    await file.sync();
    return { fileBytes, dataBytes };
  } finally {
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
