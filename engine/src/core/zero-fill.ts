import { EngineError, throwIfAborted } from "../errors.js";
import type { HostFile } from "../host/host-file.js";
import { sharedZeroBuffer, ZERO_BUFFER_SIZE } from "./zero-buffer.js";

/** Writes in flight while filling: enough to keep the device queue busy, few enough for a shared threadpool. */
export const ZERO_FILL_IN_FLIGHT = 4;

export interface ZeroFillOptions {
  signal?: AbortSignal | undefined;
  /** IoOptions.point of the writes (fault injection). */
  point?: string;
  /** Called after each completed write with the bytes it covered (completion order). */
  onWritten?: (bytes: number) => void;
}

/**
 * Writes real zero bytes over [offset, offset + length) of `file` — allocated, written blocks, as
 * preallocation "full" promises, unlike fallocate's unwritten extents — in large writes with a few in
 * flight, or through the file's own fillZeros (O_DIRECT on a real file). Cancellation is checked
 * before each write; a failure stops the other writers.
 */
export async function fillWithZeros(
  file: HostFile,
  offset: number,
  length: number,
  opts: ZeroFillOptions = {},
): Promise<void> {
  if (file.fillZeros) {
    throwIfAborted(opts.signal);
    await file.fillZeros(offset, length, {
      ...(opts.signal === undefined ? {} : { signal: opts.signal }),
      ...(opts.point === undefined ? {} : { point: opts.point }),
    });
    opts.onWritten?.(length);
    return;
  }
  const end = offset + length;
  const zeros = sharedZeroBuffer();
  let next = offset;
  let failure: unknown;
  const writer = async (): Promise<void> => {
    while (next < end && failure === undefined) {
      throwIfAborted(opts.signal);
      const pos = next;
      const n = Math.min(ZERO_BUFFER_SIZE, end - pos);
      next += n;
      await file.write(pos, zeros.subarray(0, n), opts.point === undefined ? {} : { point: opts.point });
      opts.onWritten?.(n);
    }
  };
  const writers = Array.from({ length: ZERO_FILL_IN_FLIGHT }, () =>
    writer().catch((error: unknown) => {
      failure ??= error;
    }),
  );
  await Promise.all(writers);
  if (failure !== undefined) throw EngineError.from(failure);
}
