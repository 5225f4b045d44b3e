import { Code } from "@connectrpc/connect";
import { allocationSummaryFromWire, extentFromWire } from "./convert.js";
import { VdiskError } from "./errors.js";
import type { GetAllocationMapResponse } from "./gen/vdisk/v1/allocation_pb.js";
import type { ReadVolumeResponse } from "./gen/vdisk/v1/data_pb.js";
import { backoffDelay, type RetryPolicy, sleep } from "./retry.js";
import { fromUint64 } from "./sizes.js";
import type { AllocationSummary, Extent, ReadPiece } from "./types.js";

/** Re-yields a server stream, converting whatever it throws into a VdiskError. @internal */
export async function* mapErrorsOf<T>(source: AsyncIterable<T>): AsyncGenerator<T, void, undefined> {
  try {
    yield* source;
  } catch (err) {
    throw VdiskError.from(err);
  }
}

/** ReadVolume messages → plain pieces. @internal */
export async function* readPieces(
  source: AsyncIterable<ReadVolumeResponse>,
): AsyncGenerator<ReadPiece, void, undefined> {
  for await (const message of mapErrorsOf(source)) {
    const payload = message.payload;
    if (payload.case === "chunk") {
      yield { offset: fromUint64(payload.value.offset, "offset"), data: payload.value.data };
    } else if (payload.case === "zero") {
      yield {
        offset: fromUint64(payload.value.offset, "offset"),
        length: fromUint64(payload.value.length, "length"),
        zero: true,
      };
    }
  }
}

/** The complete allocation map of a range. */
export interface AllocationMap {
  /** Merged extents in ascending order, covering the range without gaps. */
  extents: Extent[];
  /** Totals over the range. */
  summary: AllocationSummary;
}

/** The request fields of GetAllocationMap. @internal */
export interface AllocationMapRequest {
  name: string;
  offset: bigint;
  length: bigint;
  baseVolume: string;
  maxExtentsPerMessage: number;
}

/** @internal */
export type AllocationMapCall = (
  request: AllocationMapRequest,
  signal: AbortSignal | undefined,
) => AsyncIterable<GetAllocationMapResponse>;

/**
 * A streamed allocation map: iterate it for the extents (once), then `summary` holds the totals.
 * A stream that breaks with UNAVAILABLE is resumed from the last reported offset.
 */
export class AllocationMapStream implements AsyncIterable<Extent> {
  /** Totals over the range; settles when iteration reaches the end (rejects if it fails or stops early). */
  readonly summary: Promise<AllocationSummary>;
  private resolveSummary!: (summary: AllocationSummary) => void;
  private rejectSummary!: (reason: unknown) => void;
  private started = false;

  /** @internal */
  constructor(
    private readonly call: AllocationMapCall,
    private readonly request: AllocationMapRequest,
    private readonly retry: RetryPolicy,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.summary = new Promise<AllocationSummary>((resolve, reject) => {
      this.resolveSummary = resolve;
      this.rejectSummary = reject;
    });
    this.summary.catch(() => undefined);
  }

  /** Reads the whole map into memory. */
  async collect(): Promise<AllocationMap> {
    const extents: Extent[] = [];
    for await (const extent of this) extents.push(extent);
    return { extents, summary: await this.summary };
  }

  /** Yields the extents in ascending order; a stream can be iterated once. */
  async *[Symbol.asyncIterator](): AsyncIterator<Extent> {
    if (this.started) throw new TypeError("an allocation map stream can be iterated only once");
    this.started = true;
    let settled = false;
    try {
      const end = this.request.length === 0n ? undefined : this.request.offset + this.request.length;
      let offset = this.request.offset;
      let failures = 0;
      for (;;) {
        const request = { ...this.request, offset, length: end === undefined ? 0n : end - offset };
        try {
          for await (const message of this.call(request, this.signal)) {
            failures = 0;
            for (const extent of message.extents) yield extentFromWire(extent);
            if (message.nextOffset > offset) offset = message.nextOffset;
            if (message.summary) {
              settled = true;
              this.resolveSummary(allocationSummaryFromWire(message.summary));
              return;
            }
          }
          throw new VdiskError("allocation map stream ended without a summary", { status: Code.Unavailable });
        } catch (err) {
          const error = VdiskError.from(err);
          failures++;
          if (error.status !== Code.Unavailable || failures >= this.retry.maxAttempts || this.signal?.aborted)
            throw error;
          await sleep(backoffDelay(this.retry, failures), this.signal);
        }
      }
    } catch (err) {
      settled = true;
      this.rejectSummary(err);
      throw err;
    } finally {
      if (!settled)
        this.rejectSummary(
          new VdiskError("allocation map iteration stopped early", { status: Code.Canceled }),
        );
    }
  }
}
