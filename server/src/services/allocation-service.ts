import type { Server } from "@grpc/grpc-js";
import {
  type AllocationSummary,
  addToSummary,
  type BlockImage,
  discardAt,
  EngineError,
  mapExtents,
  writeZeroesAt,
} from "@vdisk/engine";
import {
  type AllocationServiceServer,
  AllocationServiceService,
  type DiscardRequest,
  type DiscardResponse,
  type GetAllocationMapRequest,
  type GetAllocationMapResponse,
  type WriteZeroesRequest,
  type WriteZeroesResponse,
} from "../gen/vdisk/v1/allocation.js";
import type { Extent } from "../gen/vdisk/v1/allocation_types.js";
import { type CallContext, failingStream, serverStream, unary } from "../rpc/adapt.js";
import { toBigint } from "../rpc/convert.js";
import { unimplemented } from "../rpc/errors.js";
import {
  markVolumeIfBroken,
  requireReadyVolume,
  requireVolume,
  type ServiceContext,
  useVolume,
} from "./context.js";
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
      allocateRange: serverStream(env, "AllocateRange", () =>
        failingStream(unimplemented("AllocateRange", "issue 4: jobs beyond create")),
      ),
      flattenVolume: serverStream(env, "FlattenVolume", () =>
        failingStream(unimplemented("FlattenVolume", "needs the qcow2 driver and copy jobs")),
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
