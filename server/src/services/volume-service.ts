import { createHash, randomUUID } from "node:crypto";
import fs from "node:fs/promises";
import type { Server } from "@grpc/grpc-js";
import {
  type BackingLink,
  BULK_FILL_WRITE_BEHIND_BYTES,
  type BlockImage,
  copyImage,
  EngineError,
  type FormatName,
  flushImage,
  type PreallocMode,
  truncateImage,
} from "@vdisk/engine";
import type { JobRecord, VolumeRecord } from "../catalog/catalog.js";
import { VolumeFormat } from "../gen/vdisk/v1/common.js";
import type { JobEvent } from "../gen/vdisk/v1/job.js";
import {
  type CheckVolumeRequest,
  CloneMode,
  type CloneVolumeRequest,
  type CreateVolumeRequest,
  type DeleteVolumeRequest,
  type DeleteVolumeResponse,
  type GetVolumeRequest,
  type GetVolumeResponse,
  type ListVolumesRequest,
  type ListVolumesResponse,
  type ResizeVolumeRequest,
  type VolumeServiceServer,
  VolumeServiceService,
} from "../gen/vdisk/v1/volume.js";
import { Qcow2Compat, VmdkSubformat } from "../gen/vdisk/v1/volume_types.js";
import type { JobContext } from "../jobs/job-runner.js";
import { validateVolumeName } from "../pool/names.js";
import { newImageBytes, requireSpace } from "../pool/space.js";
import { type CallContext, clientStream, failingStream, serverStream, unary } from "../rpc/adapt.js";
import { formatFromWire, formatToWire, preallocFromWire, toNumber } from "../rpc/convert.js";
import { unimplemented } from "../rpc/errors.js";
import { checkVolume } from "./check-job.js";
import { markVolumeIfBroken, requireReadyVolume, requireVolume, type ServiceContext } from "./context.js";
import { exportVolume, importVolume } from "./import-export.js";
import { backingChain } from "./job-stream.js";
import { jobEvent, volumeMessage } from "./volume-messages.js";

const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 1000;
const MAX_LABELS = 64;

/** What a CreateVolume asks for, normalized so that equal requests compare (and hash) equal. */
interface CreateSpec {
  name: string;
  format: FormatName;
  capacity: number;
  preallocation: PreallocMode;
  allocationBytes: number | undefined;
  backingVolume: string | undefined;
  clusterSize: number;
  /** vmdk only: zeroed-grain table entries. */
  vmdk: { subformat: "monolithicSparse"; zeroedGrain: boolean } | undefined;
  qcow2:
    | { compat: "0.10" | "1.1"; lazyRefcounts: boolean; refcountBits: number; extendedL2: boolean }
    | undefined;
  labels: Record<string, string>;
  /** CloneVolume FULL: the volume whose content (through its chain) fills the new one. */
  cloneSource: string | undefined;
}

const QCOW2_DEFAULT_CLUSTER = 64 * 1024;

const VMDK_DEFAULT_GRAIN = 64 * 1024;

export class VolumeService {
  constructor(private readonly ctx: ServiceContext) {}

  addToServer(server: Pick<Server, "addService">): void {
    const env = this.ctx.adapter;
    const impl: VolumeServiceServer = {
      createVolume: serverStream(env, "CreateVolume", (req: CreateVolumeRequest, call) =>
        this.createVolume(req, call),
      ),
      getVolume: unary(env, "GetVolume", (req: GetVolumeRequest, call) => this.getVolume(req, call)),
      listVolumes: unary(env, "ListVolumes", (req: ListVolumesRequest, call) => this.listVolumes(req, call)),
      deleteVolume: unary(env, "DeleteVolume", (req: DeleteVolumeRequest) => this.deleteVolume(req)),
      resizeVolume: serverStream(env, "ResizeVolume", (req: ResizeVolumeRequest, call) =>
        this.resizeVolume(req, call),
      ),
      cloneVolume: serverStream(env, "CloneVolume", (req: CloneVolumeRequest, call) =>
        this.cloneVolume(req, call),
      ),
      checkVolume: serverStream(env, "CheckVolume", (req: CheckVolumeRequest, call) =>
        checkVolume(this.ctx, req, call),
      ),
      importVolume: clientStream(env, "ImportVolume", (reqs, call) => importVolume(this.ctx, reqs, call)),
      exportVolume: serverStream(env, "ExportVolume", (req, call) => exportVolume(this.ctx, req, call)),
    };
    server.addService(VolumeServiceService, impl);
  }

  async *createVolume(
    req: CreateVolumeRequest,
    call: CallContext,
    kind: "CREATE_VOLUME" | "CLONE_VOLUME" = "CREATE_VOLUME",
    cloneSource?: string,
  ): AsyncGenerator<JobEvent> {
    const spec = { ...this.validateCreate(req), cloneSource };
    const specHash = hashSpec(spec);
    const requestId = req.requestId === "" ? undefined : req.requestId;
    const { catalog, jobs } = this.ctx;

    // Admission only for what would be new work: a retry of a creation that exists must still get its answer.
    const known =
      catalog.getVolume(spec.name) !== undefined ||
      (requestId !== undefined && jobs.get(requestId, true) !== undefined);
    if (!known) await this.admitCreate(spec, kind);

    let job: JobRecord | undefined;
    if (requestId !== undefined) {
      const previous = jobs.get(requestId, true);
      if (previous !== undefined) {
        if (previous.kind !== kind || previous.volume !== spec.name) {
          throw new EngineError("INVALID_ARGUMENT", "request_id was already used for a different request", {
            reason: "REQUEST_ID_REUSED",
            metadata: { job: previous.id },
          });
        }
        job = previous;
      }
    }
    if (job === undefined) {
      const existing = catalog.getVolume(spec.name);
      if (existing !== undefined) {
        if (existing.specHash !== specHash) {
          throw new EngineError(
            "ALREADY_EXISTS",
            `volume "${spec.name}" already exists with a different specification`,
            {
              reason: "VOLUME_EXISTS",
              metadata: { volume: spec.name },
            },
          );
        }
        const latest = catalog.latestJob(spec.name, kind);
        job = latest === undefined ? undefined : jobs.get(latest.id);
        if (job === undefined) {
          // Same spec, but the creating job is gone (e.g. imported by an operator): the volume is the answer.
          throw new EngineError("ALREADY_EXISTS", `volume "${spec.name}" already exists`, {
            reason: "VOLUME_EXISTS",
            metadata: { volume: spec.name },
          });
        }
      } else {
        job = this.startCreate(spec, specHash, requestId, kind);
      }
    }

    const jobId = job.id;
    if (req.cancelOnDisconnect) {
      call.signal.addEventListener("abort", () => {
        const reason = call.signal.reason as EngineError | undefined;
        if (reason?.reason === "CLIENT_CANCELLED" || reason?.reason === "DEADLINE") jobs.cancel(jobId);
      });
    }
    for await (const snapshot of jobs.watch(jobId, call.signal))
      yield await jobEvent(this.ctx, snapshot, call.signal);
  }

  /** Refuses a creation or clone up front when the pool can't hold it (see pool/space.ts). */
  private async admitCreate(spec: CreateSpec, kind: "CREATE_VOLUME" | "CLONE_VOLUME"): Promise<void> {
    const { catalog, pool } = this.ctx;
    const created = newImageBytes({
      format: spec.format,
      capacity: spec.capacity,
      clusterSize: spec.clusterSize,
      prealloc: spec.preallocation,
      allocationBytes: spec.allocationBytes,
    });
    let needed = created;
    const source = spec.cloneSource === undefined ? undefined : catalog.getVolume(spec.cloneSource);
    if (source !== undefined) {
      // A full copy holds what the source chain holds; host bytes of its files bound that from above.
      let sourceBytes = 0;
      for (const v of [source, ...backingChain(this.ctx, source)]) {
        const st = await fs.stat(pool.volumePath(v.name, v.format)).catch(() => undefined);
        sourceBytes += st === undefined ? 0 : st.blocks * 512;
      }
      const thin = newImageBytes({
        format: spec.format,
        capacity: spec.capacity,
        clusterSize: spec.clusterSize,
        prealloc: "off",
        allocationBytes: undefined,
      });
      needed = Math.max(needed, thin + sourceBytes);
    }
    await requireSpace(pool.root, needed, kind === "CREATE_VOLUME" ? "the new volume" : "the clone");
  }

  private validateCreate(req: CreateVolumeRequest): CreateSpec {
    const name = validateVolumeName(req.name);
    const format = formatFromWire(req.format);
    const backingVolume =
      req.backingVolume === "" ? undefined : validateVolumeName(req.backingVolume, "backing_volume");
    // Only qcow2 takes a backing volume; the other formats reject the field below, whatever it names.
    const base =
      backingVolume === undefined || format !== "qcow2"
        ? undefined
        : requireReadyVolume(this.ctx.catalog, backingVolume, "backing_volume");
    // As qemu-img: an overlay created without a size takes its backing volume's.
    const capacity =
      req.capacityBytes === 0n && base !== undefined
        ? base.capacity
        : toNumber(req.capacityBytes, "capacity_bytes");
    if (capacity <= 0) {
      throw new EngineError("INVALID_ARGUMENT", "capacity_bytes must be greater than 0", {
        reason: "INVALID_CAPACITY",
        metadata: { field: "capacity_bytes" },
      });
    }
    if (capacity > this.ctx.maxCapacity) {
      throw new EngineError(
        "INVALID_ARGUMENT",
        `capacity_bytes ${capacity} is above this server's limit of ${this.ctx.maxCapacity}`,
        {
          reason: "CAPACITY_ABOVE_LIMIT",
          metadata: { field: "capacity_bytes", limit: String(this.ctx.maxCapacity) },
        },
      );
    }
    const preallocation = preallocFromWire(req.preallocation);
    const allocationBytes =
      req.allocationBytes === undefined ? undefined : toNumber(req.allocationBytes, "allocation_bytes");
    if (allocationBytes !== undefined && allocationBytes > capacity) {
      throw new EngineError("INVALID_ARGUMENT", "allocation_bytes must not exceed capacity_bytes", {
        reason: "INVALID_ALLOCATION",
        metadata: { field: "allocation_bytes" },
      });
    }
    const labels = validateLabels(req.labels);
    if (format === "raw") {
      if (preallocation === "metadata") {
        throw new EngineError(
          "INVALID_ARGUMENT",
          "raw volumes support preallocation OFF, FALLOC or FULL, not METADATA",
          {
            reason: "INVALID_PREALLOCATION",
            metadata: { field: "preallocation" },
          },
        );
      }
      if (backingVolume !== undefined) {
        throw new EngineError("INVALID_ARGUMENT", "raw volumes cannot have a backing volume (use qcow2)", {
          reason: "BACKING_NOT_SUPPORTED",
          metadata: { field: "backing_volume" },
        });
      }
      if (req.clusterSize !== 0) {
        throw new EngineError("INVALID_ARGUMENT", "raw volumes have no cluster size", {
          reason: "INVALID_CLUSTER_SIZE",
          metadata: { field: "cluster_size" },
        });
      }
    } else if (format === "qcow2") {
      const invalid = (message: string, reason: string, field: string) =>
        new EngineError("INVALID_ARGUMENT", message, { reason, metadata: { field } });
      if (base !== undefined && preallocation !== "off") {
        throw invalid(
          "an overlay cannot be preallocated (its data falls through to the backing volume)",
          "INVALID_PREALLOCATION",
          "preallocation",
        );
      }
      const cs = req.clusterSize;
      if (cs !== 0 && (cs < 512 || cs > 2 * 1024 * 1024 || (cs & (cs - 1)) !== 0)) {
        throw invalid(
          "qcow2 cluster size must be a power of two from 512 B to 2 MiB",
          "INVALID_CLUSTER_SIZE",
          "cluster_size",
        );
      }
      const bits = req.qcow2?.refcountBits ?? 0;
      if (bits !== 0 && ![1, 2, 4, 8, 16, 32, 64].includes(bits)) {
        throw invalid(
          "refcount_bits must be 1, 2, 4, 8, 16, 32 or 64",
          "INVALID_REFCOUNT_BITS",
          "qcow2.refcount_bits",
        );
      }
    } else if (format === "vmdk") {
      const invalid = (message: string, reason: string, field: string) =>
        new EngineError("INVALID_ARGUMENT", message, { reason, metadata: { field } });
      if (preallocation !== "off")
        throw invalid(
          "vmdk volumes support only preallocation OFF (as in QEMU)",
          "INVALID_PREALLOCATION",
          "preallocation",
        );
      if (backingVolume !== undefined)
        throw invalid(
          "vmdk volumes cannot have a backing volume (use qcow2)",
          "BACKING_NOT_SUPPORTED",
          "backing_volume",
        );
      if (allocationBytes !== undefined)
        throw invalid("vmdk volumes have no upfront allocation", "INVALID_ALLOCATION", "allocation_bytes");
      if (req.vmdk?.subformat === VmdkSubformat.VMDK_SUBFORMAT_STREAM_OPTIMIZED) {
        throw invalid(
          "streamOptimized is a transport format and read-only here; use ExportVolume",
          "INVALID_SUBFORMAT",
          "vmdk.subformat",
        );
      }
      if (
        req.clusterSize !== 0 &&
        (req.clusterSize < 4096 ||
          req.clusterSize > 1024 * 1024 ||
          (req.clusterSize & (req.clusterSize - 1)) !== 0)
      ) {
        throw invalid(
          "vmdk grain size must be a power of two from 4 KiB to 1 MiB",
          "INVALID_CLUSTER_SIZE",
          "cluster_size",
        );
      }
    } else {
      throw unimplemented(
        `CreateVolume for ${format}`,
        `the ${format} driver is not merged into the server yet`,
      );
    }
    // qemu-img rounds raw sizes up to whole 512-byte sectors, and so does the engine; record what the file will hold.
    const stored = Math.ceil(capacity / 512) * 512;
    return {
      name,
      format,
      capacity: stored,
      preallocation,
      allocationBytes,
      backingVolume,
      clusterSize:
        format === "vmdk"
          ? req.clusterSize || VMDK_DEFAULT_GRAIN
          : format === "qcow2"
            ? req.clusterSize || QCOW2_DEFAULT_CLUSTER
            : req.clusterSize,
      qcow2:
        format === "qcow2"
          ? {
              compat: req.qcow2?.compat === Qcow2Compat.QCOW2_COMPAT_V2 ? "0.10" : "1.1",
              lazyRefcounts: req.qcow2?.lazyRefcounts === true,
              refcountBits: req.qcow2?.refcountBits || 16,
              extendedL2: req.qcow2?.extendedL2 === true,
            }
          : undefined,
      vmdk:
        format === "vmdk"
          ? { subformat: "monolithicSparse", zeroedGrain: req.vmdk?.zeroedGrain === true }
          : undefined,
      labels,
      cloneSource: undefined,
    };
  }

  private async backingFor(base: VolumeRecord): Promise<{ image: BlockImage; link: BackingLink }> {
    const image = await this.ctx.images.get(base);
    return { image, link: { fileName: this.ctx.pool.fileName(base.name, base.format), format: base.format } };
  }

  private startCreate(
    spec: CreateSpec,
    specHash: string,
    requestId: string | undefined,
    kind: "CREATE_VOLUME" | "CLONE_VOLUME",
  ): JobRecord {
    const { catalog, pool, jobs, engine, log } = this.ctx;
    const now = Date.now();
    const record: VolumeRecord = {
      name: spec.name,
      uid: randomUUID(),
      format: spec.format,
      capacity: spec.capacity,
      state: "CREATING",
      backingVolume: spec.backingVolume,
      clusterSize: spec.clusterSize,
      preallocation: spec.preallocation,
      options: {
        ...(spec.allocationBytes === undefined ? {} : { allocationBytes: spec.allocationBytes }),
        ...(spec.vmdk === undefined ? {} : { vmdk: spec.vmdk }),
        ...(spec.qcow2 === undefined ? {} : { qcow2: spec.qcow2 }),
      },
      labels: spec.labels,
      createTime: now,
      updateTime: now,
      specHash,
      requestId,
      errorMessage: undefined,
    };
    const prealloc = spec.preallocation;
    const preallocBytes = prealloc === "off" ? 0 : (spec.allocationBytes ?? spec.capacity);
    const source =
      spec.cloneSource === undefined ? undefined : requireReadyVolume(catalog, spec.cloneSource, "source");
    const totalBytes = preallocBytes + (source === undefined ? 0 : source.capacity);
    const driver = engine.driverFor(spec.format);

    const work = async (job: JobContext): Promise<void> => {
      // The overlay names its backing by pool file name (relative, as qemu-img writes it), never by path.
      const backing =
        spec.backingVolume === undefined
          ? undefined
          : await this.backingFor(requireReadyVolume(catalog, spec.backingVolume, "backing_volume"));
      const temp = pool.tempPath(spec.name, spec.format);
      const file = await engine.openHostFile(temp, { readOnly: false, create: "new" });
      try {
        job.progress(0, totalBytes, prealloc === "off" ? "creating" : "preallocating");
        await driver.create(file, {
          size: spec.capacity,
          prealloc,
          ...(spec.allocationBytes === undefined ? {} : { preallocBytes: spec.allocationBytes }),
          ...(spec.clusterSize === 0 ? {} : { clusterSize: spec.clusterSize }),
          ...(spec.vmdk === undefined ? {} : { vmdk: spec.vmdk }),
          ...(spec.qcow2 === undefined ? {} : { qcow2: spec.qcow2 }),
          ...(backing === undefined ? {} : { backing }),
          signal: job.signal,
          onProgress: (done, total, phase) => job.progress(done, total, phase ?? "preallocating"),
        });
        if (source === undefined) job.progress(totalBytes, totalBytes, "publishing");
        await file.flush();
      } finally {
        await file.close();
      }
      if (source !== undefined)
        await this.fillFromSource(source, temp, spec.format, preallocBytes, totalBytes, job);
      await pool.publish(temp, spec.name, spec.format);
      // READY and the job's SUCCEEDED row: one commit, so an acknowledged creation is one fsync away.
      job.commitSuccess(() => catalog.updateVolume(spec.name, { state: "READY" }));
    };

    // A failed or cancelled creation leaves nothing behind: no temp file, no final file, no record.
    const cleanup = async (): Promise<void> => {
      for (const temp of await pool.tempFilesOf(spec.name)) await pool.removeFile(temp);
      const current = catalog.getVolume(spec.name);
      if (current?.uid === record.uid && current.state === "CREATING") {
        await pool.removeFile(pool.volumePath(spec.name, spec.format));
        catalog.deleteVolume(spec.name);
      }
    };

    log.info(
      { volume: spec.name, format: spec.format, capacity: spec.capacity, prealloc },
      "creating volume",
    );
    // The CREATING record commits with the job's QUEUED row (one fsync): a job is never stored without
    // the record reconcile needs to clean up after it, and a CREATING record is never served.
    return jobs.submit({
      kind,
      volume: spec.name,
      ...(requestId === undefined ? {} : { requestId }),
      recordWith: () => catalog.insertVolume(record),
      // The backing volume (or a full clone's source chain) is held shared, so it can't change under us.
      locks: [
        { volume: spec.name, mode: "exclusive" },
        ...(spec.backingVolume === undefined
          ? []
          : [{ volume: spec.backingVolume, mode: "shared" as const }]),
        ...(source === undefined
          ? []
          : [source, ...backingChain(this.ctx, source)].map((v) => ({
              volume: v.name,
              mode: "shared" as const,
            }))),
      ],
      totalBytes,
      run: async (job) => {
        try {
          await work(job);
        } catch (err) {
          await cleanup().catch((cleanupErr: unknown) =>
            log.error(
              { err: cleanupErr, volume: spec.name },
              "cleanup after a failed creation failed; reconcile will finish it",
            ),
          );
          throw err;
        }
      },
    }).job;
  }

  /**
   * Copies a full clone's content into its freshly created (still unpublished) image: sparse, so runs that
   * read as zeros in the source stay unallocated in the target. Every chunk is a cancellation point.
   */
  private async fillFromSource(
    source: VolumeRecord,
    temp: string,
    format: FormatName,
    startDone: number,
    totalBytes: number,
    job: JobContext,
  ): Promise<void> {
    const { engine, images } = this.ctx;
    const sourceImage = await images.get(source);
    // A raw target is filled once, in bulk, at scattered offsets of a sparse file: through the page cache
    // that ran at ~200 MB/s here, with O_DIRECT at ~600 MB/s. qcow2 and vmdk append their clusters at the
    // end of the file instead, which is fast buffered and no faster direct (extending direct writes); their
    // data is pushed to the device while the copy goes on (write-behind) instead of all at the final flush.
    const file = await engine.openHostFile(temp, {
      readOnly: false,
      directWrites: format === "raw",
      writeBehindBytes: BULK_FILL_WRITE_BEHIND_BYTES,
    });
    let target: BlockImage;
    try {
      target = await engine.driverFor(format).open(file, { readOnly: false });
    } catch (err) {
      await file.close().catch(() => {});
      throw err;
    }
    try {
      await copyImage(sourceImage, target, {
        signal: job.signal,
        onProgress: (done, _total, phase) => job.progress(startDone + done, totalBytes, phase ?? "copying"),
      });
      job.progress(totalBytes, totalBytes, "publishing");
      await target.flush({ signal: job.signal });
    } finally {
      await target.close();
    }
  }

  /**
   * LINKED: a new qcow2 overlay whose backing is the source — exactly a CreateVolume of a qcow2 with
   * backing_volume = source and the source's capacity, recorded as a CLONE_VOLUME job.
   */
  cloneVolume(req: CloneVolumeRequest, call: CallContext): AsyncGenerator<JobEvent> {
    if (req.mode === CloneMode.CLONE_MODE_FULL) return this.cloneFull(req, call);
    if (req.mode !== CloneMode.CLONE_MODE_LINKED) {
      throw new EngineError("INVALID_ARGUMENT", "mode is required (LINKED or FULL)", {
        reason: "INVALID_CLONE_MODE",
        metadata: { field: "mode" },
      });
    }
    if (
      req.format !== VolumeFormat.VOLUME_FORMAT_UNSPECIFIED &&
      req.format !== VolumeFormat.VOLUME_FORMAT_QCOW2
    ) {
      throw new EngineError(
        "INVALID_ARGUMENT",
        "a linked clone is a qcow2 overlay; format must be QCOW2 or unset",
        {
          reason: "INVALID_FORMAT",
          metadata: { field: "format" },
        },
      );
    }
    validateVolumeName(req.source, "source");
    return this.createVolume(
      {
        name: req.name,
        format: VolumeFormat.VOLUME_FORMAT_QCOW2,
        capacityBytes: 0n,
        preallocation: req.preallocation,
        allocationBytes: undefined,
        backingVolume: req.source,
        clusterSize: req.clusterSize,
        qcow2: req.qcow2,
        vmdk: undefined,
        labels: req.labels,
        requestId: req.requestId,
        cancelOnDisconnect: req.cancelOnDisconnect,
      },
      call,
      "CLONE_VOLUME",
    );
  }

  /** FULL: an independent copy in any format (default the source's), with the source's capacity. */
  private cloneFull(req: CloneVolumeRequest, call: CallContext): AsyncGenerator<JobEvent> {
    const sourceName = validateVolumeName(req.source, "source");
    const requestId = req.requestId === "" ? undefined : req.requestId;
    // A retry after the clone finished must not need the source to still look the same.
    const prior = requestId === undefined ? undefined : this.ctx.jobs.get(requestId, true);
    const source =
      prior === undefined
        ? requireReadyVolume(this.ctx.catalog, sourceName, "source")
        : this.ctx.catalog.getVolume(sourceName);
    return this.createVolume(
      {
        name: req.name,
        format:
          req.format === VolumeFormat.VOLUME_FORMAT_UNSPECIFIED && source !== undefined
            ? formatToWire(source.format)
            : req.format,
        capacityBytes: BigInt(source?.capacity ?? 1),
        preallocation: req.preallocation,
        allocationBytes: undefined,
        backingVolume: "",
        clusterSize: req.clusterSize,
        qcow2: req.qcow2,
        vmdk: req.vmdk,
        labels: req.labels,
        requestId: req.requestId,
        cancelOnDisconnect: req.cancelOnDisconnect,
      },
      call,
      "CLONE_VOLUME",
      sourceName,
    );
  }

  async *resizeVolume(req: ResizeVolumeRequest, call: CallContext): AsyncGenerator<JobEvent> {
    const { catalog, jobs, images, log } = this.ctx;
    const requestId = req.requestId === "" ? undefined : req.requestId;
    let job: JobRecord | undefined = requestId === undefined ? undefined : jobs.get(requestId, true);
    if (job !== undefined && (job.kind !== "RESIZE_VOLUME" || job.volume !== req.name)) {
      throw new EngineError("INVALID_ARGUMENT", "request_id was already used for a different request", {
        reason: "REQUEST_ID_REUSED",
        metadata: { job: job.id },
      });
    }
    if (job === undefined) {
      const volume = requireReadyVolume(catalog, req.name);
      if (volume.format !== "raw" && volume.format !== "qcow2")
        throw unimplemented(
          `ResizeVolume for ${volume.format}`,
          "only raw and qcow2 volumes can be resized so far",
        );
      const requested = toNumber(req.capacityBytes, "capacity_bytes");
      if (requested <= 0 || requested > this.ctx.maxCapacity) {
        throw new EngineError(
          "INVALID_ARGUMENT",
          `capacity_bytes must be between 1 and ${this.ctx.maxCapacity}`,
          {
            reason: requested <= 0 ? "INVALID_CAPACITY" : "CAPACITY_ABOVE_LIMIT",
            metadata: { field: "capacity_bytes" },
          },
        );
      }
      const newSize = Math.ceil(requested / 512) * 512;
      const prealloc = preallocFromWire(req.preallocation);
      if (prealloc === "metadata" && volume.format === "raw") {
        throw new EngineError("INVALID_ARGUMENT", "raw volumes support preallocation OFF, FALLOC or FULL", {
          reason: "INVALID_PREALLOCATION",
          metadata: { field: "preallocation" },
        });
      }
      const oldSize = volume.capacity;
      if (newSize < oldSize && !req.allowShrink) {
        throw new EngineError(
          "INVALID_ARGUMENT",
          "the new capacity is smaller; set allow_shrink to discard the data past it",
          {
            reason: "SHRINK_NOT_ALLOWED",
            metadata: { field: "allow_shrink" },
          },
        );
      }
      if (newSize < oldSize && prealloc !== "off") {
        throw new EngineError("INVALID_ARGUMENT", "shrinking takes no preallocation mode", {
          reason: "INVALID_PREALLOCATION",
        });
      }
      job = jobs.submit({
        kind: "RESIZE_VOLUME",
        volume: volume.name,
        ...(requestId === undefined ? {} : { requestId }),
        locks: [{ volume: volume.name, mode: "exclusive" }],
        totalBytes: newSize > oldSize && prealloc !== "off" ? newSize - oldSize : 0,
        run: async (ctx) => {
          const image = await images.get(volume);
          try {
            await truncateImage(image, newSize, {
              prealloc,
              signal: ctx.signal,
              onProgress: (done, total, phase) => ctx.progress(done, total, phase ?? "preallocating"),
            });
            await flushImage(image);
          } catch (err) {
            // A grow cut short must not leave the file longer than the recorded capacity: raw capacity is
            // the file size, so a partial preallocation would silently change it at the next open.
            // The image still believes in the old size (it changes only after a complete truncate), so the
            // file is cut back directly, with the image closed (raw only: its size is the file size).
            if (newSize > oldSize && volume.format === "qcow2") {
              // qcow2 publishes the new size in its header before preallocating the grown area (which
              // already reads as zeros), so a cut-short grow is a complete, thinner grow: record it.
              catalog.updateVolume(volume.name, { capacity: image.virtualSize });
            } else if (newSize > oldSize) {
              await images.close(volume.uid).catch(() => {});
              await this.ctx.pool
                .truncateFile(this.ctx.pool.volumePath(volume.name, volume.format), oldSize)
                .catch((truncErr: unknown) =>
                  log.error({ err: truncErr, volume: volume.name }, "could not roll back a failed grow"),
                );
            }
            await markVolumeIfBroken(this.ctx, volume, err);
            throw err;
          }
          catalog.updateVolume(volume.name, { capacity: image.virtualSize });
          log.info({ volume: volume.name, from: oldSize, to: image.virtualSize }, "resized volume");
        },
      }).job;
    }
    const jobId = job.id;
    if (req.cancelOnDisconnect) {
      call.signal.addEventListener("abort", () => {
        const reason = call.signal.reason as EngineError | undefined;
        if (reason?.reason === "CLIENT_CANCELLED" || reason?.reason === "DEADLINE") jobs.cancel(jobId);
      });
    }
    for await (const snapshot of jobs.watch(jobId, call.signal))
      yield await jobEvent(this.ctx, snapshot, call.signal);
  }

  async getVolume(req: GetVolumeRequest, call: CallContext): Promise<GetVolumeResponse> {
    const volume = requireVolume(this.ctx.catalog, req.name);
    return { volume: await volumeMessage(this.ctx, volume, call.signal) };
  }

  async listVolumes(req: ListVolumesRequest, call: CallContext): Promise<ListVolumesResponse> {
    if (req.pageSize < 0)
      throw new EngineError("INVALID_ARGUMENT", "page_size must not be negative", {
        reason: "INVALID_PAGE_SIZE",
      });
    const pageSize = Math.min(req.pageSize === 0 ? DEFAULT_PAGE_SIZE : req.pageSize, MAX_PAGE_SIZE);
    const after = req.pageToken === "" ? undefined : decodePageToken(req.pageToken);
    const labels = validateLabels(req.labelSelector);
    // One extra row tells whether another page exists without a second query.
    const rows = this.ctx.catalog.listVolumes({
      ...(after === undefined ? {} : { after }),
      limit: pageSize + 1,
      labels,
    });
    const page = rows.slice(0, pageSize);
    const volumes = [];
    for (const v of page) volumes.push(await volumeMessage(this.ctx, v, call.signal));
    const last = page[page.length - 1];
    return {
      volumes,
      nextPageToken: rows.length > pageSize && last !== undefined ? encodePageToken(last.name) : "",
    };
  }

  async deleteVolume(req: DeleteVolumeRequest): Promise<DeleteVolumeResponse> {
    const { catalog, locks, images, pool, log } = this.ctx;
    const requestId = req.requestId === "" ? undefined : req.requestId;
    if (requestId !== undefined) {
      // A retry of a delete that went through (its answer was lost): the same OK, and nothing else is
      // touched — not even a new volume created under the name since.
      const done = catalog.completedDelete(requestId);
      if (done !== undefined && done.volume !== req.name) {
        throw new EngineError("INVALID_ARGUMENT", "request_id was already used for a different request", {
          reason: "REQUEST_ID_REUSED",
          metadata: { volume: done.volume },
        });
      }
      if (done !== undefined) return {};
    }
    const volume = requireVolume(catalog, req.name);
    const refuse = (message: string, reason: string, metadata: Record<string, string> = {}) =>
      new EngineError("FAILED_PRECONDITION", message, {
        reason,
        metadata: { volume: volume.name, ...metadata },
      });
    const dependants = catalog.dependantsOf(volume.name);
    if (dependants.length > 0) {
      throw refuse(
        `volume "${volume.name}" is the backing of ${dependants.map((d) => `"${d}"`).join(", ")}`,
        "HAS_DEPENDANTS",
        {
          dependants: dependants.join(","),
        },
      );
    }
    if (volume.state === "CREATING")
      throw refuse(`volume "${volume.name}" is still being created`, "VOLUME_BUSY");
    // Exclusive for the duration: fails with VOLUME_BUSY while a job or a data stream holds the volume.
    const release = locks.acquire(volume.name, "exclusive", `delete-${randomUUID()}`);
    try {
      try {
        catalog.updateVolume(volume.name, { state: "DELETING" });
      } catch (err) {
        // A full pool is when deleting matters most, and the catalog needs a little space to record it:
        // remove the file first, which frees that space. A crash in between leaves a READY record without
        // a file; the client did not get OK, and its retried delete finishes the job.
        if (EngineError.from(err).code !== "NO_SPACE") throw err;
        log.warn({ volume: volume.name }, "pool full: deleting the volume's file before its record");
      }
      await images.close(volume.uid);
      await pool.removeFile(pool.volumePath(volume.name, volume.format));
      catalog.deleteVolume(volume.name, requestId);
      // A GetVolume racing the delete may have reopened the image (it takes no lock): drop that too.
      await images.close(volume.uid);
    } finally {
      release();
    }
    log.info({ volume: volume.name }, "deleted volume");
    return {};
  }
}

function validateLabels(labels: Record<string, string>): Record<string, string> {
  const entries = Object.entries(labels);
  if (entries.length > MAX_LABELS)
    throw new EngineError("INVALID_ARGUMENT", `at most ${MAX_LABELS} labels are allowed`, {
      reason: "INVALID_LABELS",
    });
  for (const [key, value] of entries) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/.test(key) || value.length > 256) {
      throw new EngineError(
        "INVALID_ARGUMENT",
        `label "${key.slice(0, 64)}" is invalid (keys: 1–63 of A-Z a-z 0-9 . _ / -; values: at most 256 characters)`,
        {
          reason: "INVALID_LABELS",
        },
      );
    }
  }
  return Object.fromEntries(entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

function hashSpec(spec: CreateSpec): string {
  const canonical = JSON.stringify([
    spec.format,
    spec.capacity,
    spec.preallocation,
    spec.allocationBytes ?? null,
    spec.backingVolume ?? null,
    spec.clusterSize,
    spec.vmdk ?? null,
    spec.qcow2 ?? null,
    Object.entries(spec.labels),
    spec.cloneSource ?? null,
  ]);
  return createHash("sha256").update(canonical).digest("hex");
}

function encodePageToken(lastName: string): string {
  return Buffer.from(JSON.stringify({ after: lastName })).toString("base64url");
}

function decodePageToken(token: string): string {
  try {
    const parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as { after?: unknown };
    if (typeof parsed.after === "string") return parsed.after;
  } catch {
    // fall through
  }
  throw new EngineError("INVALID_ARGUMENT", "page_token is not a token this server issued", {
    reason: "INVALID_PAGE_TOKEN",
  });
}
