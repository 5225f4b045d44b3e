import { randomUUID } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Client, createClient, type Transport } from "@connectrpc/connect";
import {
  allocateSummaryFromWire,
  checkReportFromWire,
  jobFromWire,
  jobResultFromWire,
  volumeFromWire,
} from "./convert.js";
import {
  type AllocateModeName,
  allocateModes,
  type CloneModeName,
  cloneModes,
  type JobKindName,
  type JobStateName,
  jobKinds,
  jobStates,
  type PreallocationName,
  preallocations,
  type Qcow2CompatName,
  qcow2Compats,
  type RepairModeName,
  repairModes,
  type VmdkSubformatName,
  type VolumeFormatName,
  vmdkSubformats,
  volumeFormats,
  type ZeroDetectionName,
  zeroDetections,
} from "./enums.js";
import { mapErrors, VdiskError } from "./errors.js";
import {
  type DownloadOptions,
  type DownloadResult,
  downloadFile,
  type ExportPiece,
  exportFile,
  importFile,
  type UploadOptions,
  uploadFile,
} from "./files.js";
import { AllocationService } from "./gen/vdisk/v1/allocation_pb.js";
import { DataService, type WriteVolumeRequestSchema } from "./gen/vdisk/v1/data_pb.js";
import { type JobEvent, JobService, type Job as WireJob } from "./gen/vdisk/v1/job_pb.js";
import { type ImportVolumeRequestSchema, VolumeService } from "./gen/vdisk/v1/volume_pb.js";
import type { Qcow2OptionsSchema, VmdkOptionsSchema } from "./gen/vdisk/v1/volume_types_pb.js";
import { JobHandle, type JobHandleSource } from "./job-handle.js";
import { DEFAULT_RETRY, type RetryPolicy, retryUnavailable } from "./retry.js";
import { fromUint64, MiB, toUint32, toUint64 } from "./sizes.js";
import { AllocationMapStream, mapErrorsOf, readPieces } from "./streams.js";
import {
  createVdiskGrpcTransport,
  type TlsOptions,
  type TokenSource,
  TRANSPORT_DEFAULTS,
} from "./transport.js";
import type {
  AllocateResult,
  CheckReport,
  Job,
  JobResult,
  Page,
  ReadPiece,
  Volume,
  WritePiece,
  WriteResult,
} from "./types.js";
import { WireChannel } from "./wire/channel.js";
import { readVolumeWire, writeVolumeWire } from "./wire/data-calls.js";
import { setWireChannels, wireChannelsOf } from "./wire/registry.js";

/** Options of {@link createVdiskClient}. */
export interface VdiskClientOptions {
  /** Server address: `http://host:port` (plaintext) or `https://host:port` (TLS). Not needed with `transport`. */
  baseUrl?: string;
  /** TLS material for `https://` addresses. */
  tls?: TlsOptions;
  /** Bearer token sent as `authorization: Bearer …` on every call. */
  token?: TokenSource;
  /** Default deadline for unary calls, in ms. Streams (jobs, reads, writes) have none, as they may run for hours. */
  timeoutMs?: number;
  /** A ready-made connect Transport (tests, custom interceptors); `baseUrl`, `tls` and `token` are then ignored. */
  transport?: Transport;
  /** Retry of calls that fail with UNAVAILABLE (reusing their request id). */
  retry?: Partial<RetryPolicy>;
  /** Re-attaching to jobs whose stream broke. Default: 10 attempts, 100 ms doubling up to 5 s. */
  reattach?: Partial<RetryPolicy>;
  /** Largest message accepted or sent, in bytes (default 8 MiB). */
  maxMessageBytes?: number;
  /** HTTP/2 per-stream receive window (default 4 MiB). */
  streamWindowBytes?: number;
  /** HTTP/2 per-connection receive window (default 32 MiB). */
  connectionWindowBytes?: number;
}

/** Options of every call. */
export interface CallOptions {
  /** Aborts the call. For job calls, also cancels the job. */
  signal?: AbortSignal;
  /** Deadline of this unary call in ms (overrides the client's `timeoutMs`). */
  timeoutMs?: number;
}

/** Options of calls that change something. */
export interface MutationOptions extends CallOptions {
  /** Idempotency key; generated when omitted. Retries of the same call reuse it. */
  requestId?: string;
}

/** Options of calls that start a job. */
export interface JobCallOptions {
  /** Aborting it cancels the job (CancelJob) and rejects the handle's `result` with `"canceled"`. */
  signal?: AbortSignal;
  /** Idempotency key; generated when omitted. A repeated call with the same key returns the same job. */
  requestId?: string;
  /** Let the server cancel the job when this call's stream goes away (default: the job keeps running). */
  cancelOnDisconnect?: boolean;
}

/** qcow2 creation options. */
export interface Qcow2CreateOptions {
  /** Version (default v3). */
  compat?: Qcow2CompatName;
  /** Defer refcount updates (v3). */
  lazyRefcounts?: boolean;
  /** Refcount width in bits (default 16). */
  refcountBits?: number;
  /** Subclusters (v3, cluster ≥ 16 KiB). */
  extendedL2?: boolean;
}

/** VMDK creation options. */
export interface VmdkCreateOptions {
  /** Subformat (default monolithicSparse). */
  subformat?: VmdkSubformatName;
  /** Zeroed-grain table entries. */
  zeroedGrain?: boolean;
}

/** What to create. */
export interface CreateVolumeSpec {
  /** Unique name: 1–128 of [A-Za-z0-9._-], starting with a letter or digit. */
  name: string;
  /** On-disk format. */
  format: VolumeFormatName;
  /** Guest-visible size in bytes. */
  capacityBytes: number;
  /** Up-front allocation (default `"off"`). */
  preallocation?: PreallocationName;
  /** Preallocate only the first N bytes. */
  allocationBytes?: number;
  /** Backing volume of the same pool (qcow2). */
  backingVolume?: string;
  /** qcow2 cluster / vmdk grain size. */
  clusterSize?: number;
  /** qcow2 options. */
  qcow2?: Qcow2CreateOptions;
  /** vmdk options. */
  vmdk?: VmdkCreateOptions;
  /** User labels. */
  labels?: Record<string, string>;
}

/** Options of resizeVolume. */
export interface ResizeOptions extends JobCallOptions {
  /** Required to shrink; data past the new end is lost. */
  allowShrink?: boolean;
  /** Preallocation of the grown area. */
  preallocation?: PreallocationName;
}

/** Options of cloneVolume. */
export interface CloneOptions extends JobCallOptions {
  /** `"linked"` (qcow2 overlay on the source) or `"full"` (independent copy; default). */
  mode?: CloneModeName;
  /** Target format of a full clone (default: the source's). */
  format?: VolumeFormatName;
  /** Target preallocation. */
  preallocation?: PreallocationName;
  /** Target cluster/grain size. */
  clusterSize?: number;
  /** qcow2 target options. */
  qcow2?: Qcow2CreateOptions;
  /** vmdk target options. */
  vmdk?: VmdkCreateOptions;
  /** Labels of the new volume. */
  labels?: Record<string, string>;
}

/** Options of checkVolume. */
export interface CheckOptions extends JobCallOptions {
  /** What to repair (default `"none"`). */
  repair?: RepairModeName;
}

/** Options of allocateRange. */
export interface AllocateRangeOptions extends JobCallOptions {
  /** What to allocate. */
  mode: AllocateModeName;
  /** Start of the range (default 0). */
  offset?: number;
  /** Length of the range (default: to the end). */
  length?: number;
  /** Copy only from layers above this volume of the chain. */
  baseVolume?: string;
}

/** Options of flattenVolume. */
export interface FlattenOptions extends JobCallOptions {
  /** Keep this volume as the new direct backing. */
  baseVolume?: string;
}

/** Options of the listing calls. */
export interface ListVolumesOptions extends CallOptions {
  /** Only volumes carrying all these labels. */
  labelSelector?: Record<string, string>;
  /** Page size (default 100, at most 1000). */
  pageSize?: number;
  /** Token of the page to fetch (page calls). */
  pageToken?: string;
}

/** Options of the job listing calls. */
export interface ListJobsOptions extends CallOptions {
  /** Only jobs on this volume. */
  volume?: string;
  /** Only jobs in these states. */
  states?: JobStateName[];
  /** Only jobs of this kind. */
  kind?: JobKindName;
  /** Page size (default 100). */
  pageSize?: number;
  /** Token of the page to fetch (page calls). */
  pageToken?: string;
}

/** Options of getAllocationMap. */
export interface AllocationMapOptions {
  /** Start of the range (default 0). */
  offset?: number;
  /** Length of the range (default: to the end). */
  length?: number;
  /** Report only what lies above this volume of the chain. */
  baseVolume?: string;
  /** Extents per message (server default 1024). */
  maxExtentsPerMessage?: number;
  /** Aborts the stream. */
  signal?: AbortSignal;
}

/** Options of readVolume. */
export interface ReadOptions {
  /** Start of the range (default 0). */
  offset?: number;
  /** Length (default: to the end). */
  length?: number;
  /** Largest data piece (default 1 MiB, at most 4 MiB). */
  chunkSize?: number;
  /** Send zero runs instead of zero bytes (default true). */
  sparse?: boolean;
  /** Aborts the stream. */
  signal?: AbortSignal;
}

/** Options of writeVolume. */
export interface WriteOptions {
  /** What the server does with all-zero data (default `"off"`). */
  zeroDetection?: ZeroDetectionName;
  /** Aborts the stream; data acknowledged as flushed stays durable. */
  signal?: AbortSignal;
}

/** The first message of an import: what the uploaded bytes are and what to make of them. */
export interface ImportSpec {
  /** Name of the new volume. */
  name: string;
  /** Format of the uploaded bytes (checked against the content). */
  format: VolumeFormatName;
  /** Format to store (default: the uploaded one). */
  targetFormat?: VolumeFormatName;
  /** Total upload size, if known. */
  uploadBytes?: number;
  /** Largest virtual size to accept. */
  maxCapacityBytes?: number;
  /** Labels of the new volume. */
  labels?: Record<string, string>;
}

/** Options of exportVolume. */
export interface ExportOptions {
  /** File format to produce (default `"raw"`, sparse). */
  format?: VolumeFormatName;
  /** qcow2: compress clusters. */
  compress?: boolean;
  /** Largest data piece (default 1 MiB). */
  chunkSize?: number;
  /** Aborts the stream. */
  signal?: AbortSignal;
}

/** The generated connect clients, for calls the friendly methods do not cover. Values are wire types (bigint, enums). */
export interface RawClients {
  /** vdisk.v1.VolumeService. */
  volumes: Client<typeof VolumeService>;
  /** vdisk.v1.AllocationService. */
  allocation: Client<typeof AllocationService>;
  /** vdisk.v1.DataService. */
  data: Client<typeof DataService>;
  /** vdisk.v1.JobService. */
  jobs: Client<typeof JobService>;
}

// Data pieces larger than this are split before sending: 256 KiB–1 MiB messages stream fastest.
/** @internal */
export const WRITE_SLICE = MiB;

function qcow2Init(
  o: Qcow2CreateOptions | undefined,
): MessageInitShape<typeof Qcow2OptionsSchema> | undefined {
  if (!o) return undefined;
  return {
    compat: o.compat ? qcow2Compats.encode(o.compat) : 0,
    lazyRefcounts: o.lazyRefcounts ?? false,
    refcountBits: o.refcountBits === undefined ? 0 : toUint32(o.refcountBits, "qcow2.refcountBits"),
    extendedL2: o.extendedL2 ?? false,
  };
}

function vmdkInit(o: VmdkCreateOptions | undefined): MessageInitShape<typeof VmdkOptionsSchema> | undefined {
  if (!o) return undefined;
  return {
    subformat: o.subformat ? vmdkSubformats.encode(o.subformat) : 0,
    zeroedGrain: o.zeroedGrain ?? false,
  };
}

function volumeResult(job: WireJob): Volume {
  if (job.result?.result.case !== "volume")
    throw new VdiskError("job succeeded without a volume result", { status: 13 });
  return volumeFromWire(job.result.result.value);
}

function checkResult(job: WireJob): CheckReport {
  if (job.result?.result.case !== "check")
    throw new VdiskError("check job succeeded without a report", { status: 13 });
  return checkReportFromWire(job.result.result.value);
}

function allocateResult(job: WireJob): AllocateResult {
  const volume = job.result?.result.case === "volume" ? volumeFromWire(job.result.result.value) : undefined;
  return { volume, summary: allocateSummaryFromWire(job.result?.allocate) };
}

/**
 * A vdisk client. Sizes and offsets are plain numbers of bytes (RangeError above 2^53-1), enums are strings,
 * and every failure is a {@link VdiskError}. Make one with {@link createVdiskClient}; call `close()` when done.
 */
export class VdiskClient {
  /** The generated clients, for advanced use. */
  readonly raw: RawClients;
  /** Clients for the client-streaming uploads (WriteVolume, ImportVolume), on their own connection. */
  private readonly uploads: Pick<RawClients, "volumes" | "data">;
  private readonly retry: RetryPolicy;
  private readonly reattach: RetryPolicy;
  private readonly timeoutMs: number | undefined;
  private readonly closeTransport: () => void;
  private closed = false;

  /** @internal Use {@link createVdiskClient}. */
  constructor(options: VdiskClientOptions) {
    let transport = options.transport;
    let uploadTransport = transport;
    let close = () => {};
    if (!transport) {
      const { baseUrl } = options;
      if (!baseUrl) throw new TypeError("createVdiskClient needs a baseUrl or a transport");
      const connect = () =>
        createVdiskGrpcTransport({
          baseUrl,
          tls: options.tls,
          token: options.token,
          maxMessageBytes: options.maxMessageBytes ?? TRANSPORT_DEFAULTS.maxMessageBytes,
          streamWindowBytes: options.streamWindowBytes ?? TRANSPORT_DEFAULTS.streamWindowBytes,
          connectionWindowBytes: options.connectionWindowBytes ?? TRANSPORT_DEFAULTS.connectionWindowBytes,
        });
      // Uploads get their own HTTP/2 connection (opened on first use). Node's HTTP/2 stops reading its
      // socket while a socket write of its own is pending, so a connection carrying bulk data both ways
      // can stall for good: both peers write into full socket buffers and neither reads. With one
      // direction per connection, the other way carries only small frames and never blocks.
      const main = connect();
      const uploads = connect();
      transport = main.transport;
      uploadTransport = uploads.transport;
      // ReadVolume and WriteVolume carry the bulk bytes on hand-made gRPC calls (src/wire): connect's
      // generic path costs over 2 s of client CPU per GiB in copies and per-frame events.
      const wireSettings = {
        baseUrl,
        tls: options.tls,
        token: options.token,
        maxMessageBytes: options.maxMessageBytes ?? TRANSPORT_DEFAULTS.maxMessageBytes,
        streamWindowBytes: options.streamWindowBytes ?? TRANSPORT_DEFAULTS.streamWindowBytes,
        connectionWindowBytes: options.connectionWindowBytes ?? TRANSPORT_DEFAULTS.connectionWindowBytes,
      };
      const wire = { downloads: new WireChannel(wireSettings), uploads: new WireChannel(wireSettings) };
      setWireChannels(this, wire);
      close = () => {
        main.close();
        uploads.close();
        wire.downloads.close();
        wire.uploads.close();
      };
    }
    this.closeTransport = close;
    this.raw = {
      volumes: createClient(VolumeService, transport),
      allocation: createClient(AllocationService, transport),
      data: createClient(DataService, transport),
      jobs: createClient(JobService, transport),
    };
    this.uploads = {
      volumes: createClient(VolumeService, uploadTransport ?? transport),
      data: createClient(DataService, uploadTransport ?? transport),
    };
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    this.reattach = { maxAttempts: 10, initialDelayMs: 100, maxDelayMs: 5000, ...options.reattach };
    this.timeoutMs = options.timeoutMs;
  }

  /** Closes the connection: open calls fail and job handles stop following their jobs (the jobs keep running). */
  close(): void {
    this.closed = true;
    this.closeTransport();
  }

  private unaryOptions(options: CallOptions | undefined) {
    const timeoutMs = options?.timeoutMs ?? this.timeoutMs;
    return { signal: options?.signal, ...(timeoutMs === undefined ? {} : { timeoutMs }) };
  }

  /** Unary call with UNAVAILABLE retries; `call` must reuse one request object so retries share its request id. */
  private unary<T>(
    options: CallOptions | undefined,
    call: (opts: { signal?: AbortSignal | undefined; timeoutMs?: number }) => Promise<T>,
  ): Promise<T> {
    const opts = this.unaryOptions(options);
    return retryUnavailable(() => call(opts), this.retry, options?.signal);
  }

  private job<T>(
    options: JobCallOptions | undefined,
    start: (signal: AbortSignal) => AsyncIterable<JobEvent>,
    result: (job: WireJob) => T,
  ): JobHandle<T> {
    const source: JobHandleSource<T> = {
      start,
      watch: (id, signal) => this.raw.jobs.watchJob({ id }, { signal }),
      cancel: (id) => this.cancelJob(id),
      result,
      reattach: this.reattach,
      signal: options?.signal,
      closed: () => this.closed,
    };
    return new JobHandle(source);
  }

  /**
   * Creates a volume. Returns at once with a {@link JobHandle}; `await handle.result` gives the READY volume.
   * Idempotent by name and request id.
   */
  createVolume(spec: CreateVolumeSpec, options?: JobCallOptions): JobHandle<Volume> {
    const request = {
      name: spec.name,
      format: volumeFormats.encode(spec.format),
      capacityBytes: toUint64(spec.capacityBytes, "capacityBytes"),
      preallocation: preallocations.encode(spec.preallocation ?? "off"),
      ...(spec.allocationBytes === undefined
        ? {}
        : { allocationBytes: toUint64(spec.allocationBytes, "allocationBytes") }),
      backingVolume: spec.backingVolume ?? "",
      clusterSize: spec.clusterSize === undefined ? 0 : toUint32(spec.clusterSize, "clusterSize"),
      qcow2: qcow2Init(spec.qcow2),
      vmdk: vmdkInit(spec.vmdk),
      labels: { ...spec.labels },
      requestId: options?.requestId ?? randomUUID(),
      cancelOnDisconnect: options?.cancelOnDisconnect ?? false,
    };
    return this.job(options, (signal) => this.raw.volumes.createVolume(request, { signal }), volumeResult);
  }

  /** Creates a volume and waits until it is READY. */
  createVolumeAndWait(spec: CreateVolumeSpec, options?: JobCallOptions): Promise<Volume> {
    return this.createVolume(spec, options).result;
  }

  /** Returns one volume with its current sizes. */
  async getVolume(name: string, options?: CallOptions): Promise<Volume> {
    const response = await this.unary(options, (o) => this.raw.volumes.getVolume({ name }, o));
    if (!response.volume) throw new VdiskError("GetVolume returned no volume", { status: 13 });
    return volumeFromWire(response.volume);
  }

  /** Fetches one page of volumes, in name order. */
  async listVolumesPage(options?: ListVolumesOptions): Promise<Page<Volume>> {
    const request = {
      pageSize: options?.pageSize ?? 0,
      pageToken: options?.pageToken ?? "",
      labelSelector: { ...options?.labelSelector },
    };
    const response = await this.unary(options, (o) => this.raw.volumes.listVolumes(request, o));
    return {
      items: response.volumes.map(volumeFromWire),
      nextPageToken: response.nextPageToken || undefined,
    };
  }

  /** Iterates over all volumes (every page), in name order. */
  async *listVolumes(options?: ListVolumesOptions): AsyncGenerator<Volume, void, undefined> {
    let pageToken = options?.pageToken;
    do {
      const page = await this.listVolumesPage({
        ...options,
        ...(pageToken === undefined ? {} : { pageToken }),
      });
      yield* page.items;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /** Deletes a volume and its file. FAILED_PRECONDITION while it backs another volume or a job holds it. */
  async deleteVolume(name: string, options?: MutationOptions): Promise<void> {
    const request = { name, requestId: options?.requestId ?? randomUUID() };
    await this.unary(options, (o) => this.raw.volumes.deleteVolume(request, o));
  }

  /** Changes a volume's capacity (shrinking needs `allowShrink`). */
  resizeVolume(name: string, capacityBytes: number, options?: ResizeOptions): JobHandle<Volume> {
    const request = {
      name,
      capacityBytes: toUint64(capacityBytes, "capacityBytes"),
      allowShrink: options?.allowShrink ?? false,
      preallocation: preallocations.encode(options?.preallocation ?? "off"),
      requestId: options?.requestId ?? randomUUID(),
      cancelOnDisconnect: options?.cancelOnDisconnect ?? false,
    };
    return this.job(options, (signal) => this.raw.volumes.resizeVolume(request, { signal }), volumeResult);
  }

  /** Makes a new volume `name` from `source`: a linked qcow2 overlay or a full (possibly format-converting) copy. */
  cloneVolume(source: string, name: string, options?: CloneOptions): JobHandle<Volume> {
    const request = {
      source,
      name,
      mode: cloneModes.encode(options?.mode ?? "full"),
      format: options?.format ? volumeFormats.encode(options.format) : 0,
      preallocation: preallocations.encode(options?.preallocation ?? "off"),
      clusterSize: options?.clusterSize === undefined ? 0 : toUint32(options.clusterSize, "clusterSize"),
      qcow2: qcow2Init(options?.qcow2),
      vmdk: vmdkInit(options?.vmdk),
      labels: { ...options?.labels },
      requestId: options?.requestId ?? randomUUID(),
      cancelOnDisconnect: options?.cancelOnDisconnect ?? false,
    };
    return this.job(options, (signal) => this.raw.volumes.cloneVolume(request, { signal }), volumeResult);
  }

  /** Checks (and optionally repairs) a volume's metadata; the result is the report. */
  checkVolume(name: string, options?: CheckOptions): JobHandle<CheckReport> {
    const request = {
      name,
      repair: repairModes.encode(options?.repair ?? "none"),
      requestId: options?.requestId ?? randomUUID(),
      cancelOnDisconnect: options?.cancelOnDisconnect ?? false,
    };
    return this.job(options, (signal) => this.raw.volumes.checkVolume(request, { signal }), checkResult);
  }

  /** Makes a range independent of (part of) the backing chain without changing content. */
  allocateRange(name: string, options: AllocateRangeOptions): JobHandle<AllocateResult> {
    const request = {
      name,
      offset: toUint64(options.offset ?? 0, "offset"),
      length: toUint64(options.length ?? 0, "length"),
      mode: allocateModes.encode(options.mode),
      baseVolume: options.baseVolume ?? "",
      requestId: options.requestId ?? randomUUID(),
      cancelOnDisconnect: options.cancelOnDisconnect ?? false,
    };
    return this.job(
      options,
      (signal) => this.raw.allocation.allocateRange(request, { signal }),
      allocateResult,
    );
  }

  /** Copies up everything the backing chain provides, then drops the backing link (or relinks to `baseVolume`). */
  flattenVolume(name: string, options?: FlattenOptions): JobHandle<AllocateResult> {
    const request = {
      name,
      baseVolume: options?.baseVolume ?? "",
      requestId: options?.requestId ?? randomUUID(),
      cancelOnDisconnect: options?.cancelOnDisconnect ?? false,
    };
    return this.job(
      options,
      (signal) => this.raw.allocation.flattenVolume(request, { signal }),
      allocateResult,
    );
  }

  /** Makes a range read as zeros without sending zeros; `mayUnmap` lets the server free the space. */
  async writeZeroes(
    name: string,
    offset: number,
    length: number,
    options?: MutationOptions & { mayUnmap?: boolean },
  ): Promise<void> {
    const request = {
      name,
      offset: toUint64(offset, "offset"),
      length: toUint64(length, "length"),
      mayUnmap: options?.mayUnmap ?? false,
      requestId: options?.requestId ?? randomUUID(),
    };
    await this.unary(options, (o) => this.raw.allocation.writeZeroes(request, o));
  }

  /** Frees a range where the format allows; it then reads as zeros (never as backing data). */
  async discard(name: string, offset: number, length: number, options?: MutationOptions): Promise<void> {
    const request = {
      name,
      offset: toUint64(offset, "offset"),
      length: toUint64(length, "length"),
      requestId: options?.requestId ?? randomUUID(),
    };
    await this.unary(options, (o) => this.raw.allocation.discard(request, o));
  }

  /**
   * Streams the allocation map of a range (qemu-img map semantics, adjacent equal extents merged).
   * Iterate it for the extents; `summary` settles at the end; `collect()` reads it all.
   */
  getAllocationMap(name: string, options?: AllocationMapOptions): AllocationMapStream {
    const request = {
      name,
      offset: toUint64(options?.offset ?? 0, "offset"),
      length: toUint64(options?.length ?? 0, "length"),
      baseVolume: options?.baseVolume ?? "",
      maxExtentsPerMessage:
        options?.maxExtentsPerMessage === undefined
          ? 0
          : toUint32(options.maxExtentsPerMessage, "maxExtentsPerMessage"),
    };
    return new AllocationMapStream(
      (req, signal) => this.raw.allocation.getAllocationMap(req, { signal }),
      request,
      this.retry,
      options?.signal,
    );
  }

  /**
   * Streams a range of a volume. With `sparse` (the default) runs that read as zeros arrive as
   * `{ offset, length, zero: true }` instead of bytes.
   */
  readVolume(name: string, options?: ReadOptions): AsyncIterable<ReadPiece> {
    const request = {
      name,
      offset: toUint64(options?.offset ?? 0, "offset"),
      length: toUint64(options?.length ?? 0, "length"),
      chunkSize: options?.chunkSize === undefined ? 0 : toUint32(options.chunkSize, "chunkSize"),
      sparse: options?.sparse ?? true,
    };
    const wire = wireChannelsOf(this);
    if (wire !== undefined) {
      const fields = {
        name: request.name,
        offset: options?.offset ?? 0,
        length: options?.length ?? 0,
        chunkSize: request.chunkSize,
        sparse: request.sparse,
      };
      return mapErrorsOf(readVolumeWire(wire.downloads, fields, options?.signal));
    }
    const data = this.raw.data;
    // Leaving the loop early (break, return, throw) must cancel the call: connect only stops reading, so the
    // HTTP/2 stream would stay open and the server would keep its admission slot until the connection closes.
    return (async function* () {
      const stop = new AbortController();
      const signal =
        options?.signal === undefined ? stop.signal : AbortSignal.any([options.signal, stop.signal]);
      try {
        yield* readPieces(data.readVolume(request, { signal }));
      } finally {
        stop.abort();
      }
    })();
  }

  /**
   * Writes data pieces, zero runs and flush markers to a volume, in the order given. Large data pieces are
   * split into 1 MiB messages. Resolves when the server has written (and, at the end, flushed) everything.
   */
  async writeVolume(
    name: string,
    pieces: AsyncIterable<WritePiece> | Iterable<WritePiece>,
    options?: WriteOptions,
  ): Promise<WriteResult> {
    const wire = wireChannelsOf(this);
    if (wire !== undefined) {
      return writeVolumeWire(wire.uploads, name, pieces, {
        zeroDetection: options?.zeroDetection ?? "off",
        signal: options?.signal,
        slice: WRITE_SLICE,
        ownsBuffers: false,
      });
    }
    const zeroDetection = zeroDetections.encode(options?.zeroDetection ?? "off");
    async function* messages(): AsyncGenerator<MessageInitShape<typeof WriteVolumeRequestSchema>> {
      yield { payload: { case: "open", value: { name, zeroDetection } } };
      for await (const piece of pieces) {
        if ("flush" in piece) {
          yield { payload: { case: "flush", value: {} } };
        } else if ("zero" in piece) {
          yield {
            payload: {
              case: "zero",
              value: { offset: toUint64(piece.offset, "offset"), length: toUint64(piece.length, "length") },
            },
          };
        } else {
          toUint64(piece.offset + piece.data.length, "offset + data length");
          for (let at = 0; at < piece.data.length; at += WRITE_SLICE) {
            const data = piece.data.subarray(at, Math.min(piece.data.length, at + WRITE_SLICE));
            yield { payload: { case: "chunk", value: { offset: BigInt(piece.offset + at), data } } };
          }
        }
      }
    }
    const response = await mapErrors(() =>
      this.uploads.data.writeVolume(messages(), { signal: options?.signal }),
    );
    return {
      writtenBytes: fromUint64(response.writtenBytes, "written_bytes"),
      zeroedBytes: fromUint64(response.zeroedBytes, "zeroed_bytes"),
      flushedBytes: fromUint64(response.flushedBytes, "flushed_bytes"),
    };
  }

  /**
   * Uploads an image file's bytes as a new volume. The server inspects the content before storing it
   * (no backing files, matching format). Resolves with the stored volume.
   */
  async importVolume(
    spec: ImportSpec,
    data: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    options?: { signal?: AbortSignal; requestId?: string },
  ): Promise<Volume> {
    const header = {
      name: spec.name,
      format: volumeFormats.encode(spec.format),
      targetFormat: spec.targetFormat ? volumeFormats.encode(spec.targetFormat) : 0,
      uploadBytes: toUint64(spec.uploadBytes ?? 0, "uploadBytes"),
      maxCapacityBytes: toUint64(spec.maxCapacityBytes ?? 0, "maxCapacityBytes"),
      labels: { ...spec.labels },
      requestId: options?.requestId ?? randomUUID(),
    };
    async function* messages(): AsyncGenerator<MessageInitShape<typeof ImportVolumeRequestSchema>> {
      yield { payload: { case: "header", value: header } };
      for await (const bytes of data) {
        for (let at = 0; at < bytes.length; at += WRITE_SLICE) {
          yield {
            payload: { case: "data", value: bytes.subarray(at, Math.min(bytes.length, at + WRITE_SLICE)) },
          };
        }
      }
    }
    const response = await mapErrors(() =>
      this.uploads.volumes.importVolume(messages(), { signal: options?.signal }),
    );
    if (!response.volume) throw new VdiskError("ImportVolume returned no volume", { status: 13 });
    return volumeFromWire(response.volume);
  }

  /**
   * Downloads a volume as an image file, produced on the fly. Yields the header first, then file bytes
   * in order; raw exports skip zero runs (`{ offset, length, zero: true }`).
   */
  async *exportVolume(name: string, options?: ExportOptions): AsyncGenerator<ExportPiece, void, undefined> {
    const request = {
      name,
      format: volumeFormats.encode(options?.format ?? "raw"),
      compress: options?.compress ?? false,
      chunkSize: options?.chunkSize === undefined ? 0 : toUint32(options.chunkSize, "chunkSize"),
    };
    for await (const message of mapErrorsOf(
      this.raw.volumes.exportVolume(request, { signal: options?.signal }),
    )) {
      const payload = message.payload;
      if (payload.case === "header") {
        yield {
          header: true,
          format: volumeFormats.decode(payload.value.format, "unspecified"),
          capacityBytes: fromUint64(payload.value.capacityBytes, "capacity_bytes"),
          fileBytes: fromUint64(payload.value.fileBytes, "file_bytes"),
        };
      } else if (payload.case === "chunk") {
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

  /**
   * Writes a local file into an existing volume (from offset 0 unless given). With `sparse` (default),
   * all-zero 64 KiB blocks are sent as zero runs, so holes cost nothing on the wire.
   */
  uploadFile(volume: string, path: string, options?: UploadOptions): Promise<WriteResult> {
    return uploadFile(this, volume, path, options);
  }

  /** Downloads a volume's guest data into a local file; zero runs become holes. */
  downloadFile(volume: string, path: string, options?: DownloadOptions): Promise<DownloadResult> {
    return downloadFile(this, volume, path, options);
  }

  /** Uploads a local image file (raw, qcow2 or vmdk bytes) as a new volume. */
  importFile(
    path: string,
    spec: ImportSpec,
    options?: { signal?: AbortSignal; requestId?: string },
  ): Promise<Volume> {
    return importFile(this, path, spec, options);
  }

  /** Downloads a volume as a local image file in the requested format (raw exports are sparse). */
  exportFile(volume: string, path: string, options?: ExportOptions): Promise<DownloadResult> {
    return exportFile(this, volume, path, options);
  }

  /** Returns one job's latest snapshot. */
  async getJob(id: string, options?: CallOptions): Promise<Job> {
    const response = await this.unary(options, (o) => this.raw.jobs.getJob({ id }, o));
    if (!response.job) throw new VdiskError("GetJob returned no job", { status: 13 });
    return jobFromWire(response.job);
  }

  /** Fetches one page of jobs, newest first. */
  async listJobsPage(options?: ListJobsOptions): Promise<Page<Job>> {
    const request = {
      pageSize: options?.pageSize ?? 0,
      pageToken: options?.pageToken ?? "",
      volume: options?.volume ?? "",
      states: (options?.states ?? []).map((s) => jobStates.encode(s)),
      kind: options?.kind ? jobKinds.encode(options.kind) : 0,
    };
    const response = await this.unary(options, (o) => this.raw.jobs.listJobs(request, o));
    return { items: response.jobs.map(jobFromWire), nextPageToken: response.nextPageToken || undefined };
  }

  /** Iterates over all jobs (every page), newest first. */
  async *listJobs(options?: ListJobsOptions): AsyncGenerator<Job, void, undefined> {
    let pageToken = options?.pageToken;
    do {
      const page = await this.listJobsPage({ ...options, ...(pageToken === undefined ? {} : { pageToken }) });
      yield* page.items;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /** Attaches to a running (or finished) job by id; aborting `signal` cancels the job. */
  watchJob(id: string, options?: { signal?: AbortSignal }): JobHandle<JobResult> {
    return this.job(
      options,
      (signal) => this.raw.jobs.watchJob({ id }, { signal }),
      (job) => jobResultFromWire(job.result),
    );
  }

  /** Asks a job to stop at its next safe point. Cancelling a finished job is not an error. */
  async cancelJob(id: string, options?: CallOptions): Promise<Job> {
    const response = await this.unary(options, (o) => this.raw.jobs.cancelJob({ id }, o));
    if (!response.job) throw new VdiskError("CancelJob returned no job", { status: 13 });
    return jobFromWire(response.job);
  }
}

/**
 * Creates a client for a vdisk server over HTTP/2 gRPC (large flow-control windows, no compression,
 * 8 MiB message limits). With `token`, every call carries `authorization: Bearer <token>`.
 *
 * @example
 * const vdisk = createVdiskClient({ baseUrl: "http://127.0.0.1:7420" });
 * const volume = await vdisk.createVolumeAndWait({ name: "disk1", format: "qcow2", capacityBytes: 10 * GiB });
 */
export function createVdiskClient(options: VdiskClientOptions): VdiskClient {
  return new VdiskClient(options);
}
