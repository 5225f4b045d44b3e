import path from "node:path";
import { removeAll, runCommand } from "../util/proc.js";
import { durable, GiB, humanBytes, poolFile, scaled, TiB, timed } from "./common.js";
import { engineCopy, ensureUploaded } from "./copy.js";
import { createVolume, deleteVolumeIfExists } from "./server-ops.js";
import { denseRaw } from "./sources.js";
import type { BenchContext, Contestant, Workload } from "./types.js";

const STREAM = 2 * GiB;
const SPARSE = TiB;

/** One transfer as each side does it: download (volume → local file) or upload (local file → volume). */
interface Transfer {
  direction: "download" | "upload";
  volume: string;
  /** Local file: the download's output, or the upload's input. */
  local: string;
  /** The peer's output for an upload (it writes a new file, as qemu-img convert does). */
  peerOut: string;
  /** The engine's output (a copy with the engine: raw → raw). */
  engineOut: string;
}

function peerArgs(ctx: BenchContext, t: Transfer): string[] {
  // -U: the server keeps its volumes open; the peer reads the pool file without taking image locks.
  return t.direction === "download"
    ? ["qemu-img", "convert", "-U", "-f", "raw", "-O", "raw", poolFile(ctx.poolDir, t.volume, "raw"), t.local]
    : ["qemu-img", "convert", "-f", "raw", "-O", "raw", t.local, t.peerOut];
}

function peerOutput(t: Transfer): string {
  return t.direction === "download" ? t.local : t.peerOut;
}

async function serverTransfer(ctx: BenchContext, t: Transfer): Promise<void> {
  if (t.direction === "download") {
    await ctx.client.downloadFile(t.volume, t.local);
    await durable(t.local);
  } else {
    await ctx.client.uploadFile(t.volume, t.local, { sparse: true });
    await durable(poolFile(ctx.poolDir, t.volume, "raw"));
  }
}

async function engineTransfer(ctx: BenchContext, t: Transfer, size: number): Promise<void> {
  const source = t.direction === "download" ? poolFile(ctx.poolDir, t.volume, "raw") : t.local;
  await engineCopy(source, "raw", t.engineOut, "raw", size);
  await durable(t.engineOut);
}

/** Peer, server and engine contestants moving the same bytes for a set of concurrent transfers. */
function contestants(ctx: BenchContext, transfers: Transfer[], size: number, what: string): Contestant[] {
  const uploads = transfers.filter((t) => t.direction === "upload");
  const resetUploadVolumes = async () => {
    for (const t of uploads) {
      await deleteVolumeIfExists(ctx.client, t.volume);
      await createVolume(ctx.client, { name: t.volume, format: "raw", capacityBytes: size });
    }
  };
  const peerOutputs = transfers.map(peerOutput);
  const serverOutputs = transfers.filter((t) => t.direction === "download").map((t) => t.local);
  const engineOutputs = transfers.map((t) => t.engineOut);
  return [
    {
      side: "peer",
      label: `${transfers.map((t) => peerArgs(ctx, t).join(" ")).join(" & ")} (+ fsync outputs)`,
      before: () => removeAll(peerOutputs),
      async run() {
        let rss = 0;
        const seconds = await timed(async () => {
          const runs = await Promise.all(transfers.map((t) => runCommand(peerArgs(ctx, t))));
          rss = Math.max(...runs.map((r) => r.peakRssBytes ?? 0));
          await durable(...peerOutputs);
        });
        return { seconds, ...(rss > 0 ? { peakRssBytes: rss } : {}) };
      },
      after: () => removeAll(peerOutputs),
    },
    {
      side: "server",
      label: `${what} over gRPC with the SDK (downloadFile / uploadFile, + fsync outputs)`,
      async before() {
        await removeAll(serverOutputs);
        await resetUploadVolumes();
      },
      async run() {
        const seconds = await timed(() => Promise.all(transfers.map((t) => serverTransfer(ctx, t))));
        return { seconds };
      },
      after: () => removeAll(serverOutputs),
    },
    {
      side: "engine",
      label: "copyImage raw → raw of the same bytes, in-process (no network)",
      before: () => removeAll(engineOutputs),
      async run() {
        const seconds = await timed(() => Promise.all(transfers.map((t) => engineTransfer(ctx, t, size))));
        return { seconds };
      },
      after: () => removeAll(engineOutputs),
    },
  ];
}

function transfer(
  ctx: BenchContext,
  name: string,
  direction: Transfer["direction"],
  volume: string,
  local: string,
): Transfer {
  return {
    direction,
    volume,
    local,
    peerOut: path.join(ctx.workDir, `${name}-peer.raw`),
    engineOut: path.join(ctx.workDir, `${name}-engine.raw`),
  };
}

function cleanup(ctx: BenchContext, transfers: Transfer[], volumes: string[]): () => Promise<void> {
  return async () => {
    await removeAll(
      transfers.flatMap((t) => [t.peerOut, t.engineOut, ...(t.direction === "download" ? [t.local] : [])]),
    );
    for (const v of volumes) await deleteVolumeIfExists(ctx.client, v);
  };
}

export const grpcReadWorkload: Workload = {
  name: "grpc-read",
  title: "ReadVolume of 2 GiB of data over gRPC into a local file",
  peer: "qemu-img convert -f raw -O raw VOLUME local.raw",
  async prepare(ctx) {
    const size = scaled(STREAM, ctx.scale);
    const src = await denseRaw(path.join(ctx.workDir, "sources"), size);
    await ensureUploaded(ctx.client, "grpc-src", src, size);
    const t = transfer(ctx, "grpc-read", "download", "grpc-src", path.join(ctx.workDir, "grpc-read-out.raw"));
    return {
      contestants: contestants(ctx, [t], size, "ReadVolume (downloadFile)"),
      bytes: size,
      parameters: { bytes: size },
      teardown: cleanup(ctx, [t], []),
    };
  },
};

export const grpcWriteWorkload: Workload = {
  name: "grpc-write",
  title: "WriteVolume of 2 GiB of data over gRPC from a local file",
  peer: "qemu-img convert -f raw -O raw local.raw VOLUME",
  async prepare(ctx) {
    const size = scaled(STREAM, ctx.scale);
    const src = await denseRaw(path.join(ctx.workDir, "sources"), size);
    const t = transfer(ctx, "grpc-write", "upload", "grpc-dst", src);
    return {
      contestants: contestants(ctx, [t], size, "WriteVolume (uploadFile)"),
      bytes: size,
      parameters: { bytes: size },
      teardown: cleanup(ctx, [t], ["grpc-dst"]),
    };
  },
};

export const grpcSparseReadWorkload: Workload = {
  name: "grpc-sparse-read",
  title: "sparse ReadVolume of an empty 1 TiB raw volume into a local sparse file",
  peer: "qemu-img convert -f raw -O raw VOLUME local.raw",
  async prepare(ctx) {
    await deleteVolumeIfExists(ctx.client, "empty-1t");
    await createVolume(ctx.client, { name: "empty-1t", format: "raw", capacityBytes: SPARSE });
    const t = transfer(
      ctx,
      "grpc-sparse-read",
      "download",
      "empty-1t",
      path.join(ctx.workDir, "grpc-sparse-out.raw"),
    );
    return {
      contestants: contestants(ctx, [t], SPARSE, "ReadVolume sparse (downloadFile)"),
      parameters: { virtualBytes: SPARSE },
      teardown: cleanup(ctx, [t], ["empty-1t"]),
    };
  },
};

export const streams4Workload: Workload = {
  name: "streams4",
  title:
    "four concurrent 2 GiB streams (2 ReadVolume + 2 WriteVolume): aggregate throughput, server peak RSS",
  peer: "4 × qemu-img convert -f raw -O raw, concurrently",
  async prepare(ctx) {
    const size = scaled(STREAM, ctx.scale);
    const sources = path.join(ctx.workDir, "sources");
    const src = await denseRaw(sources, size);
    ctx.log(`  uploading 2 source volumes of ${humanBytes(size)}`);
    await ensureUploaded(ctx.client, "s4-src-0", src, size);
    await ensureUploaded(ctx.client, "s4-src-1", src, size);
    const transfers = [
      transfer(ctx, "s4-down-0", "download", "s4-src-0", path.join(ctx.workDir, "s4-down-0.raw")),
      transfer(ctx, "s4-down-1", "download", "s4-src-1", path.join(ctx.workDir, "s4-down-1.raw")),
      transfer(ctx, "s4-up-0", "upload", "s4-dst-0", src),
      transfer(ctx, "s4-up-1", "upload", "s4-dst-1", src),
    ];
    return {
      contestants: contestants(ctx, transfers, size, "2 downloads + 2 uploads, concurrently,"),
      bytes: 4 * size,
      parameters: { streams: 4, bytesPerStream: size },
      teardown: cleanup(ctx, transfers, ["s4-src-0", "s4-src-1", "s4-dst-0", "s4-dst-1"]),
    };
  },
};

export const streamWorkloads: Workload[] = [
  grpcReadWorkload,
  grpcWriteWorkload,
  grpcSparseReadWorkload,
  streams4Workload,
];
