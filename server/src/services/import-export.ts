import { createHash, randomUUID } from "node:crypto";
import fs from "node:fs/promises";
import {
  type BlockImage,
  BULK_FILL_WRITE_BEHIND_BYTES,
  copyImage,
  EngineError,
  type ExportPiece,
  exportQcow2,
  exportRaw,
  exportVmdk,
  type FormatName,
  type HostFile,
  type Inspection,
  inspectInSandbox,
} from "@vdisk/engine";
import type { VolumeRecord } from "../catalog/catalog.js";
import { VolumeFormat } from "../gen/vdisk/v1/common.js";
import type {
  ExportVolumeRequest,
  ExportVolumeResponse,
  ImportVolumeHeader,
  ImportVolumeRequest,
  ImportVolumeResponse,
} from "../gen/vdisk/v1/volume.js";
import { validateVolumeName } from "../pool/names.js";
import { requireSpace } from "../pool/space.js";
import type { CallContext } from "../rpc/adapt.js";
import { formatFromWire, formatToWire, toBigint, toNumber } from "../rpc/convert.js";
import { requireReadyVolume, type ServiceContext, useVolume } from "./context.js";
import { volumeMessage } from "./volume-messages.js";

const DEFAULT_CHUNK = 1024 * 1024;
/** Largest data message either way; with framing it stays inside the server's 8 MiB message limit. */
const MAX_CHUNK = 4 * 1024 * 1024;
const MAX_LABELS = 64;
/** Uploads land sparse: all-zero blocks of this size are skipped rather than written. */
const ZERO_BLOCK = 64 * 1024;
const ZEROS = Buffer.alloc(ZERO_BLOCK);

/**
 * qcow2/vmdk files carry metadata on top of the guest data (tables, grain markers, compression that
 * did not pay off), so an image file may legitimately be somewhat larger than its virtual size.
 */
function maxUploadBytes(format: FormatName, quota: number): number {
  return format === "raw" ? quota : quota + Math.ceil(quota / 8) + 64 * 1024 * 1024;
}

interface ImportSpec {
  name: string;
  format: FormatName;
  target: FormatName;
  uploadBytes: number | undefined;
  quota: number;
  labels: Record<string, string>;
  requestId: string | undefined;
}

function invalid(message: string, reason: string, field?: string): EngineError {
  return new EngineError("INVALID_ARGUMENT", message, {
    reason,
    ...(field === undefined ? {} : { metadata: { field } }),
  });
}

function validateHeader(ctx: ServiceContext, header: ImportVolumeHeader): ImportSpec {
  const name = validateVolumeName(header.name);
  const format = formatFromWire(header.format);
  const target =
    header.targetFormat === VolumeFormat.VOLUME_FORMAT_UNSPECIFIED
      ? format
      : formatFromWire(header.targetFormat);
  const requested = toNumber(header.maxCapacityBytes, "max_capacity_bytes");
  const quota = requested === 0 ? ctx.maxCapacity : Math.min(requested, ctx.maxCapacity);
  const uploadBytes = header.uploadBytes === 0n ? undefined : toNumber(header.uploadBytes, "upload_bytes");
  const limit = maxUploadBytes(format, quota);
  if (uploadBytes !== undefined && uploadBytes > limit) throw uploadTooLarge(uploadBytes, limit);
  return {
    name,
    format,
    target,
    uploadBytes,
    quota,
    labels: validateLabels(header.labels),
    requestId: header.requestId === "" ? undefined : header.requestId,
  };
}

function uploadTooLarge(bytes: number, limit: number): EngineError {
  return new EngineError("NO_SPACE", `the upload of ${bytes} bytes is over the limit of ${limit} bytes`, {
    reason: "UPLOAD_TOO_LARGE",
    metadata: { limit: String(limit) },
  });
}

function validateLabels(labels: Record<string, string>): Record<string, string> {
  const entries = Object.entries(labels);
  const bad = entries.find(
    ([key, value]) => !/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/.test(key) || value.length > 256,
  );
  if (entries.length > MAX_LABELS || bad !== undefined) {
    throw invalid(
      `labels are invalid (at most ${MAX_LABELS}; keys: 1–63 of A-Z a-z 0-9 . _ / -; values: at most 256 characters)`,
      "INVALID_LABELS",
      "labels",
    );
  }
  return Object.fromEntries(entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

function existingVolumeError(name: string): EngineError {
  return new EngineError("ALREADY_EXISTS", `volume "${name}" already exists`, {
    reason: "VOLUME_EXISTS",
    metadata: { volume: name },
  });
}

/**
 * ImportVolume: the upload is staged under the pool's temp dir, inspected in the sandbox, then either
 * published as it is or converted into the target format, and only then recorded. Any failure removes
 * every file this call made and any record it inserted.
 */
export async function importVolume(
  ctx: ServiceContext,
  requests: AsyncIterable<ImportVolumeRequest>,
  call: CallContext,
): Promise<ImportVolumeResponse> {
  const messages = requests[Symbol.asyncIterator]();
  const first = await messages.next();
  const header = first.done ? undefined : first.value.payload;
  if (header?.$case !== "header") {
    throw invalid("the first ImportVolume message must be the header", "MISSING_HEADER", "header");
  }
  const spec = validateHeader(ctx, header.header);
  const existing = ctx.catalog.getVolume(spec.name);
  if (existing !== undefined) {
    // A retried import (same request_id) that already succeeded gets its volume back.
    if (spec.requestId !== undefined && existing.requestId === spec.requestId && existing.state === "READY") {
      return { volume: await volumeMessage(ctx, existing, call.signal), receivedBytes: 0n };
    }
    throw existingVolumeError(spec.name);
  }

  const { pool, catalog, log } = ctx;
  // Only the reserve is checked: uploads land sparse, so their size says little about the space they take.
  await requireSpace(pool.root, 0, "the import");
  const temps: string[] = [];
  let record: VolumeRecord | undefined;
  try {
    const staging = pool.tempPath(spec.name, spec.format);
    temps.push(staging);
    const received = await stageUpload(staging, messages, spec);
    const inspection = await inspectInSandbox(
      staging,
      spec.format,
      { maxVirtualSize: spec.quota },
      { signal: call.signal },
    );
    const storeAsIs = spec.target === spec.format && inspection.details.vmdk?.subformat !== "streamOptimized";
    let ready = staging;
    let clusterSize = inspection.details.qcow2?.clusterSize ?? inspection.details.vmdk?.grainSize ?? 0;
    if (!storeAsIs) {
      ready = pool.tempPath(spec.name, spec.target);
      temps.push(ready);
      clusterSize = await convert(ctx, staging, ready, spec, inspection, call.signal);
      await pool.removeFile(staging);
    }

    // Checked again now: a CreateVolume or another import may have taken the name during the upload.
    // The catalog is synchronous, so nothing can slip in between this check and the insert.
    if (catalog.getVolume(spec.name) !== undefined) throw existingVolumeError(spec.name);
    const now = Date.now();
    const uid = randomUUID();
    record = {
      name: spec.name,
      uid,
      format: spec.target,
      capacity: inspection.virtualSize,
      state: "CREATING",
      backingVolume: undefined,
      clusterSize: spec.target === "raw" ? 0 : clusterSize,
      preallocation: "off",
      options: recordOptions(spec.target, storeAsIs ? inspection : undefined),
      labels: spec.labels,
      createTime: now,
      updateTime: now,
      // Unique: an import is never "the same request" as a CreateVolume of that name.
      specHash: createHash("sha256").update(`import:${uid}`).digest("hex"),
      requestId: spec.requestId,
      errorMessage: undefined,
    };
    catalog.insertVolume(record);
    await pool.publish(ready, spec.name, spec.target);
    const volume = catalog.updateVolume(spec.name, { state: "READY" });
    log.info(
      {
        volume: spec.name,
        format: spec.format,
        target: spec.target,
        capacity: inspection.virtualSize,
        received,
      },
      "imported volume",
    );
    return { volume: await volumeMessage(ctx, volume, call.signal), receivedBytes: toBigint(received) };
  } catch (err) {
    await cleanupImport(ctx, temps, record).catch((cleanupErr: unknown) =>
      log.error(
        { err: cleanupErr, volume: spec.name },
        "cleanup after a failed import failed; reconcile will finish it",
      ),
    );
    throw err;
  }
}

async function cleanupImport(
  ctx: ServiceContext,
  temps: string[],
  record: VolumeRecord | undefined,
): Promise<void> {
  for (const temp of temps) await ctx.pool.removeFile(temp);
  if (record === undefined) return;
  const current = ctx.catalog.getVolume(record.name);
  if (current?.uid === record.uid && current.state === "CREATING") {
    await ctx.pool.removeFile(ctx.pool.volumePath(record.name, record.format));
    ctx.catalog.deleteVolume(record.name);
  }
}

/**
 * Writes the data messages to `staging` in order. Each write is awaited before the next message is
 * pulled, so a fast client is held back by gRPC flow control, never buffered here. All-zero 64 KiB blocks
 * become holes (raw uploads of sparse disks stay sparse). Returns the bytes received.
 */
async function stageUpload(
  staging: string,
  messages: AsyncIterator<ImportVolumeRequest>,
  spec: ImportSpec,
): Promise<number> {
  const limit = Math.min(
    spec.uploadBytes ?? Number.MAX_SAFE_INTEGER,
    maxUploadBytes(spec.format, spec.quota),
  );
  const handle = await fs.open(staging, "wx", 0o600);
  try {
    let received = 0;
    for (let next = await messages.next(); !next.done; next = await messages.next()) {
      const payload = next.value.payload;
      if (payload?.$case !== "data") {
        throw invalid("only the first ImportVolume message may be a header", "UNEXPECTED_HEADER", "header");
      }
      const data = payload.data;
      if (data.length > MAX_CHUNK) {
        throw invalid(`a data message holds at most ${MAX_CHUNK} bytes`, "CHUNK_TOO_LARGE", "data");
      }
      if (received + data.length > limit) throw uploadTooLarge(received + data.length, limit);
      for (const [start, end] of nonZeroRuns(data)) {
        let done = start;
        while (done < end) {
          const { bytesWritten } = await handle.write(data, done, end - done, received + done);
          done += bytesWritten;
        }
      }
      received += data.length;
    }
    if (spec.uploadBytes !== undefined && received !== spec.uploadBytes) {
      throw invalid(
        `the upload ended after ${received} of the announced ${spec.uploadBytes} bytes`,
        "UPLOAD_INCOMPLETE",
        "upload_bytes",
      );
    }
    if (received === 0) throw invalid("the upload is empty", "UPLOAD_EMPTY", "data");
    // Skipped zero messages at the end left no bytes: the length must still be what was sent.
    await handle.truncate(received);
    await handle.sync();
    return received;
  } finally {
    await handle.close();
  }
}

/** Byte ranges of `data` to write, in ZERO_BLOCK steps: all-zero blocks are left as holes. */
function nonZeroRuns(data: Buffer): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  for (let at = 0; at < data.length; at += ZERO_BLOCK) {
    const end = Math.min(data.length, at + ZERO_BLOCK);
    if (Buffer.compare(data.subarray(at, end), ZEROS.subarray(0, end - at)) === 0) continue;
    const last = runs[runs.length - 1];
    if (last !== undefined && last[1] === at) last[1] = end;
    else runs.push([at, end]);
  }
  return runs;
}

/**
 * Stores an accepted upload in another format (or a streamOptimized VMDK as a sparse one): a new image
 * of the target format, filled by copyImage, which skips what reads as zeros. Returns the cluster size.
 */
async function convert(
  ctx: ServiceContext,
  source: string,
  target: string,
  spec: ImportSpec,
  inspection: Inspection,
  signal: AbortSignal,
): Promise<number> {
  const { engine } = ctx;
  const srcFile = await engine.openHostFile(source, { readOnly: true });
  let src: BlockImage;
  try {
    src = await engine.driverFor(spec.format).open(srcFile, { readOnly: true });
  } catch (err) {
    await srcFile.close().catch(() => {});
    throw err;
  }
  try {
    const size = Math.ceil(inspection.virtualSize / 512) * 512;
    const driver = engine.driverFor(spec.target);
    const created = await engine.openHostFile(target, { readOnly: false, create: "new" });
    try {
      await driver.create(created, {
        size,
        prealloc: "off",
        ...(spec.target === "vmdk" ? { vmdk: { subformat: "monolithicSparse" as const } } : {}),
        signal,
      });
      await created.flush();
    } finally {
      await created.close();
    }
    // Filled in bulk like a full clone's target: a raw one with O_DIRECT writes, others with write-behind
    // (see fillFromSource).
    const dstFile = await engine.openHostFile(target, {
      readOnly: false,
      directWrites: spec.target === "raw",
      writeBehindBytes: BULK_FILL_WRITE_BEHIND_BYTES,
    });
    let dst: BlockImage;
    try {
      dst = await driver.open(dstFile, { readOnly: false });
    } catch (err) {
      await dstFile.close().catch(() => {});
      throw err;
    }
    try {
      await copyImage(src, dst, { signal });
      await dst.flush();
      const details = dst.details();
      return details.qcow2?.clusterSize ?? details.vmdk?.grainSize ?? 0;
    } finally {
      await dst.close();
    }
  } finally {
    await src.close();
  }
}

/** The format options recorded for an imported volume, as CreateVolume would have recorded them. */
function recordOptions(format: FormatName, inspection: Inspection | undefined): Record<string, unknown> {
  if (format === "vmdk") return { vmdk: { subformat: "monolithicSparse", zeroedGrain: false } };
  if (format !== "qcow2") return {};
  const q = inspection?.details.qcow2;
  return {
    qcow2: {
      compat: q?.compat ?? "1.1",
      lazyRefcounts: q?.lazyRefcounts ?? false,
      refcountBits: q?.refcountBits ?? 16,
      extendedL2: q?.extendedL2 ?? false,
    },
  };
}

/**
 * ExportVolume: the header, then the producer's pieces as chunk and zero messages. The adapter waits for
 * 'drain' between writes, and the producers are pulled one piece at a time, so memory stays bounded.
 */
export async function* exportVolume(
  ctx: ServiceContext,
  req: ExportVolumeRequest,
  call: CallContext,
): AsyncGenerator<ExportVolumeResponse> {
  const volume = requireReadyVolume(ctx.catalog, req.name);
  const format = req.format === VolumeFormat.VOLUME_FORMAT_UNSPECIFIED ? "raw" : formatFromWire(req.format);
  const chunkSize = req.chunkSize === 0 ? DEFAULT_CHUNK : req.chunkSize;
  if (chunkSize > MAX_CHUNK) {
    throw invalid(`chunk_size must be at most ${MAX_CHUNK}`, "INVALID_CHUNK_SIZE", "chunk_size");
  }
  if (req.compress && format !== "qcow2") {
    throw invalid("compress applies to qcow2 exports only", "INVALID_COMPRESS", "compress");
  }
  const { signal } = call;
  const release = useVolume(ctx, volume);
  let stagingPath: string | undefined;
  let staging: HostFile | undefined;
  try {
    const image = await ctx.images.get(volume);
    yield {
      payload: {
        $case: "header",
        header: {
          format: formatToWire(format),
          capacityBytes: toBigint(image.virtualSize),
          fileBytes: format === "raw" ? toBigint(image.virtualSize) : 0n,
        },
      },
    };
    let pieces: AsyncGenerator<ExportPiece>;
    if (format === "raw") pieces = exportRaw(image, { chunkSize, signal });
    else if (format === "vmdk") pieces = exportVmdk(image, { signal, fileName: `${volume.name}.vmdk` });
    else {
      if (req.compress) {
        // Where each compressed cluster lands depends on all compressed sizes: the image is assembled first.
        stagingPath = ctx.pool.tempPath(volume.name, "qcow2");
        staging = await ctx.engine.openHostFile(stagingPath, { readOnly: false, create: "new" });
      }
      pieces = exportQcow2(image, {
        chunkSize,
        compress: req.compress,
        ...(staging === undefined ? {} : { staging }),
        signal,
      });
    }
    for await (const piece of pieces) {
      if (piece.zero) {
        yield {
          payload: {
            $case: "zero",
            zero: { offset: toBigint(piece.offset), length: toBigint(piece.length) },
          },
        };
      } else {
        const data = Buffer.from(piece.data.buffer, piece.data.byteOffset, piece.data.byteLength);
        yield { payload: { $case: "chunk", chunk: { offset: toBigint(piece.offset), data } } };
      }
    }
  } finally {
    release();
    await staging?.close().catch(() => {});
    if (stagingPath !== undefined) {
      await ctx.pool
        .removeFile(stagingPath)
        .catch((err: unknown) =>
          ctx.log.error({ err, file: stagingPath }, "could not remove an export staging file"),
        );
    }
  }
}
