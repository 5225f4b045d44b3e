import type { ProgressFn } from "../types.js";

/** Bytes of the output file at `offset`. */
export interface ExportDataPiece {
  offset: number;
  data: Uint8Array;
  zero?: undefined;
}

/** A run of the output file that reads as zeros: never read from the source, never sent as bytes (a hole). */
export interface ExportZeroPiece {
  offset: number;
  length: number;
  zero: true;
}

/**
 * One piece of an exported image file, in ascending, contiguous order: the file is exactly the
 * concatenation of the pieces, and its length is the end of the last piece. Producers are single-pass
 * and hold at most one piece (plus fixed-size tables) in memory, so pieces can go straight to a stream.
 */
export type ExportPiece = ExportDataPiece | ExportZeroPiece;

export interface ExportOptions {
  /** Largest data piece in bytes (default 1 MiB). */
  chunkSize?: number;
  signal?: AbortSignal;
  /** Guest bytes processed out of the virtual size, with a phase name. */
  onProgress?: ProgressFn;
}

export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
