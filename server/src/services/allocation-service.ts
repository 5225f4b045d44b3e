import type { Server } from "@grpc/grpc-js";
import {
  type AllocateMode as EngineAllocateMode,
  type AllocationSummary,
  addToSummary,
  allocateRange,
  type BlockImage,
  discardAt,
  EngineError,
  flattenImage,
  mapExtents,
  writeZeroesAt,
} from "@vdisk/engine";
import {
  type AllocateRangeRequest,
  AllocateMode,
  type AllocationServiceServer,
  type FlattenVolumeRequest,
  AllocationServiceService,
  type DiscardRequest,
  type DiscardResponse,
  type GetAllocationMapRequest,
  type GetAllocationMapResponse,
  type WriteZeroesRequest,
  type WriteZeroesResponse,
} from "../gen/vdisk/v1/allocation.js";
import type { Extent } from "../gen/vdisk/v1/allocation_types.js";
import type { VolumeRecord } from "../catalog/catalog.js";
import type { JobEvent } from "../gen/vdisk/v1/job.js";
import { type CallContext, serverStream, unary } from "../rpc/adapt.js";
import { toBigint, toNumber } from "../rpc/convert.js";
import {
  markVolumeIfBroken,
  requireReadyVolume,
  requireVolume,
  type ServiceContext,
  useVolume,
} from "./context.js";
import { backingChain, priorJob, requireBaseInChain, streamJob } from "./job-stream.js";
import { resolveRange } from "./ranges.js";

const DEFAULT_EXTENTS_PER_MESSAGE = 1024;
const MAX_EXTENTS_PER_MESSAGE = 16384;

export class AllocationService {
  constructor(private readonly ctx: ServiceContext) {}

  addToServer(server: Pick<Server, "addService">): void {
    const env = this.ctx.adapter;
    const impl: AllocationServiceServer = {
      getAllocationMap: serverStream(env, "GetAllocationMap", (req: GetAllocationMapRequest, call) =>
        this.getAllocationMap(req, call),
      ),
      allocateRange: serverStream(env, "AllocateRange", (req: AllocateRangeRequest, call) =>
        this.allocateRange(req, call),
      ),
      flattenVolume: serverStream(env, "FlattenVolume", (req: FlattenVolumeRequest, call) =>
        this.flattenVolume(req, call),
      ),
      writeZeroes: unary(env, "WriteZeroes", (req: WriteZeroesRequest, call) => this.writeZeroes(req, call)),
      discard: unary(env, "Discard", (req: DiscardRequest, call) => this.discard(req, call)),
    };
    server.addService(AllocationServiceService, impl);
  }

  async *getAllocationMap(
    req: GetAllocationMapRequest,
    call: CallContext,
  ): AsyncGenerator<GetAllocationMapResponse> {
    const volume = requireReadyVolume(this.ctx.catalog, req.name);
    const perMessage =
      req.maxExtentsPerMessage === 0 ? DEFAULT_EXTENTS_PER_MESSAGE : req.maxExtentsPerMessage;
    if (perMessage > MAX_EXTENTS_PER_MESSAGE) {
      throw new EngineError(
        "INVALID_ARGUMENT",
        `max_extents_per_message must be at most ${MAX_EXTENTS_PER_MESSAGE}`,
        {
          reason: "INVALID_PAGE_SIZE",
          metadata: { field: "max_extents_per_message" },
        },
      );
    }
    const release = useVolume(this.ctx, volume);
    try {
      const image = await this.ctx.images.get(volume);
      const base = req.baseVolume === "" ? undefined : await this.baseImage(req.baseVolume);
      const { start, end } = resolveRange(image, req.offset, req.length, false);
      const summary: AllocationSummary = {
        dataBytes: 0,
        zeroBytes: 0,
        unallocatedBytes: 0,
        allocatedInTopBytes: 0,
      };
      let batch: Extent[] = [];
      for await (const extent of mapExtents(image, {
        start,
        length: end - start,
        signal: call.signal,
        ...(base === undefined ? {} : { base }),
      })) {
        addToSummary(summary, extent);
        batch.push({
          offset: toBigint(extent.start),
          length: toBigint(extent.length),
          data: extent.data,
          zero: extent.zero,
          present: extent.present,
          depth: extent.depth,
          hostOffset: extent.offset === undefined ? undefined : toBigint(extent.offset),
          compressed: extent.compressed,
        });
        if (batch.length === perMessage) {
          yield { extents: batch, nextOffset: toBigint(extent.start + extent.length), summary: undefined };
          batch = [];
        }
      }
      yield {
        extents: batch,
        nextOffset: toBigint(end),
        summary: {
          dataBytes: toBigint(summary.dataBytes),
          zeroBytes: toBigint(summary.zeroBytes),
          unallocatedBytes: toBigint(summary.unallocatedBytes),
          topAllocatedBytes: toBigint(summary.allocatedInTopBytes),
        },
      };
    } finally {
      release();
    }
  }

  private async baseImage(name: string): Promise<BlockImage> {
    const base = requireVolume(this.ctx.catalog, name, "base_volume");
    return this.ctx.images.get(base);
  }

  async writeZeroes(req: WriteZeroesRequest, call: CallContext): Promise<WriteZeroesResponse> {
    await this.onRange(req, async (image, start, end) =>
      writeZeroesAt(image, start, end - start, { mayUnmap: req.mayUnmap, signal: call.signal }),
    );
    return {};
  }

  /** AllocateRange as a job: the top layer exclusive, every layer below it shared while it copies. */
  async *allocateRange(req: AllocateRangeRequest, call: CallContext): AsyncGenerator<JobEvent> {
    const ctx = this.ctx;
    const requestId = req.requestId === "" ? undefined : req.requestId;
    let job = priorJob(ctx, requestId, "ALLOCATE_RANGE", req.name);
    if (job === undefined) {
      const volume = requireReadyVolume(ctx.catalog, req.name);
      const mode = allocateModeFromWire(req.mode);
      const baseRecord =
        req.baseVolume === "" ? undefined : requireBaseInChain(ctx, volume, req.baseVolume);
      const offset = toNumber(req.offset, "offset");
      const requested = toNumber(req.length, "length");
      if (offset > volume.capacity || (requested > 0 && offset + requested > volume.capacity)) {
        throw new EngineError("OUT_OF_RANGE", "range lies past the end of the volume", {
          reason: "RANGE_PAST_END",
          metadata: { field: "offset" },
        });
      }
      const length = requested === 0 ? volume.capacity - offset : requested;
      job = ctx.jobs.submit({
        kind: "ALLOCATE_RANGE",
        volume: volume.name,
        ...(requestId === undefined ? {} : { requestId }),
        locks: chainLocks(ctx, volume),
        totalBytes: length,
        run: async (job) => {
          const image = await ctx.images.get(volume);
          const base = baseRecord === undefined ? undefined : await ctx.images.get(baseRecord);
          try {
            return await allocateRange(image, {
              offset,
              length,
              mode,
              ...(base === undefined ? {} : { base }),
              signal: job.signal,
              onProgress: (done, total, phase) => job.progress(done, total, phase ?? "allocating"),
            });
          } catch (err) {
            await markVolumeIfBroken(ctx, volume, err);
            throw err;
          }
        },
      }).job;
    }
    yield* streamJob(ctx, job.id, call, req.cancelOnDisconnect);
  }

  /**
   * FlattenVolume as a job: copy up everything above the base, then relink the header and the catalog
   * together, so the recorded backing (and chain depth) never disagrees with the file for longer than
   * that step.
   */
  async *flattenVolume(req: FlattenVolumeRequest, call: CallContext): AsyncGenerator<JobEvent> {
    const ctx = this.ctx;
    const requestId = req.requestId === "" ? undefined : req.requestId;
    let job = priorJob(ctx, requestId, "FLATTEN_VOLUME", req.name);
    if (job === undefined) {
      const volume = requireReadyVolume(ctx.catalog, req.name);
      const baseRecord =
        req.baseVolume === "" ? undefined : requireBaseInChain(ctx, volume, req.baseVolume);
      job = ctx.jobs.submit({
        kind: "FLATTEN_VOLUME",
        volume: volume.name,
        ...(requestId === undefined ? {} : { requestId }),
        locks: chainLocks(ctx, volume),
        totalBytes: volume.capacity,
        run: async (job) => {
          const image = await ctx.images.get(volume);
          const base = baseRecord === undefined ? undefined : await ctx.images.get(baseRecord);
          const baseLink =
            baseRecord === undefined
              ? undefined
              : { fileName: ctx.pool.fileName(baseRecord.name, baseRecord.format), format: baseRecord.format };
          try {
            const result = await flattenImage(image, {
              ...(base === undefined ? {} : { base }),
              ...(baseLink === undefined ? {} : { baseLink }),
              signal: job.signal,
              onProgress: (done, total, phase) => job.progress(done, total, phase ?? "copying"),
            });
            ctx.catalog.updateVolume(volume.name, { backingVolume: baseRecord?.name ?? null });
            ctx.log.info({ volume: volume.name, base: baseRecord?.name }, "flattened volume");
            return result;
          } catch (err) {
            await markVolumeIfBroken(ctx, volume, err);
            throw err;
          }
        },
      }).job;
    }
    yield* streamJob(ctx, job.id, call, req.cancelOnDisconnect);
  }

  async discard(req: DiscardRequest, call: CallContext): Promise<DiscardResponse> {
    await this.onRange(req, async (image, start, end) =>
      discardAt(image, start, end - start, { signal: call.signal }),
    );
    return {};
  }

  private async onRange(
    req: { name: string; offset: bigint; length: bigint },
    op: (image: BlockImage, start: number, end: number) => Promise<void>,
  ): Promise<void> {
    const volume = requireReadyVolume(this.ctx.catalog, req.name);
    const release = useVolume(this.ctx, volume);
    try {
      const image = await this.ctx.images.get(volume);
      const { start, end } = resolveRange(image, req.offset, req.length, true);
      await op(image, start, end);
    } catch (err) {
      await markVolumeIfBroken(this.ctx, volume, err);
      throw err;
    } finally {
      release();
    }
  }
}

function allocateModeFromWire(mode: AllocateMode): EngineAllocateMode {
  switch (mode) {
    case AllocateMode.ALLOCATE_MODE_COPY_UP:
      return "copy-up";
    case AllocateMode.ALLOCATE_MODE_FULL:
      return "full";
    case AllocateMode.ALLOCATE_MODE_METADATA:
      return "metadata";
    default:
      throw new EngineError("INVALID_ARGUMENT", "mode is required (COPY_UP, FULL or METADATA)", {
        reason: "INVALID_ALLOCATE_MODE",
        metadata: { field: "mode" },
      });
  }
}

/** The volume itself exclusive; its backing chain shared, so no layer it reads is changed or deleted. */
function chainLocks(
  ctx: ServiceContext,
  volume: VolumeRecord,
): { volume: string; mode: "exclusive" | "shared" }[] {
  return [
    { volume: volume.name, mode: "exclusive" },
    ...backingChain(ctx, volume).map((v) => ({ volume: v.name, mode: "shared" as const })),
  ];
}
