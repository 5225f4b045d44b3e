import path from "node:path";
import type { FormatName } from "@vdisk/engine";
import { BULK_FILL_WRITE_BEHIND_BYTES, copyImage } from "@vdisk/engine";
import type { VdiskClient } from "@vdisk/sdk";
import { VdiskError } from "@vdisk/sdk";
import { engineCreate, engineOpen } from "../engine-access.js";
import { removeAll, runCommand, runQuiet } from "../util/proc.js";
import { durable, GiB, humanBytes, poolFile, scaled, timed } from "./common.js";
import { cloneVolumeFull, createVolume, deleteVolumeIfExists, servedOrReason } from "./server-ops.js";
import { scatteredQcow2, scatteredRaw } from "./sources.js";
import type { BenchContext, Contestant, PreparedWorkload, Workload } from "./types.js";

const VIRTUAL = 8 * GiB;
const DATA = 2 * GiB;
const SOURCE_VOLUME = "copy-src";

/** The scattered source as a raw volume of the pool, uploaded once per server (untimed). */
export async function ensureUploaded(
  client: VdiskClient,
  name: string,
  file: string,
  capacityBytes: number,
): Promise<void> {
  try {
    const existing = await client.getVolume(name);
    if (existing.capacityBytes === capacityBytes) return;
    await client.deleteVolume(name);
  } catch (err) {
    if (!(err instanceof VdiskError && err.code === "not_found")) throw err;
  }
  await createVolume(client, { name, format: "raw", capacityBytes });
  await client.uploadFile(name, file, { sparse: true });
}

interface CopyCase {
  name: string;
  from: "raw" | "qcow2";
  to: "raw" | "qcow2";
}

function copyWorkload(c: CopyCase): Workload {
  return {
    name: c.name,
    title: `copy ${c.from} → ${c.to}: ${humanBytes(VIRTUAL)} virtual, ${humanBytes(DATA)} of random data in 1 MiB runs`,
    peer: `qemu-img convert -f ${c.from} -O ${c.to}`,
    async prepare(ctx: BenchContext): Promise<PreparedWorkload> {
      const virtual = scaled(VIRTUAL, ctx.scale);
      const data = scaled(DATA, ctx.scale);
      const sourcesDir = path.join(ctx.workDir, "sources");
      ctx.log(`  building the source image (${humanBytes(virtual)} virtual, ${humanBytes(data)} data)`);
      const rawSource = await scatteredRaw(sourcesDir, virtual, data);
      const source = c.from === "raw" ? rawSource : await scatteredQcow2(rawSource);
      const peerOut = path.join(ctx.workDir, `${c.name}-peer.${c.to}`);
      const engineOut = path.join(ctx.workDir, `${c.name}-engine.${c.to}`);
      const target = `${c.name}-out`;
      const targetFile = poolFile(ctx.poolDir, target, c.to);

      // The server's source: the raw volume uploaded once; for a qcow2 source, its FULL clone to qcow2.
      const sourceVolume = c.from === "raw" ? SOURCE_VOLUME : `${SOURCE_VOLUME}-qcow2`;
      const notServed = await servedOrReason(async () => {
        await createVolume(ctx.client, { name: `${c.name}-probe`, format: "raw", capacityBytes: 1 << 20 });
        try {
          await cloneVolumeFull(ctx.client, `${c.name}-probe`, `${c.name}-probe-clone`, c.to);
          await deleteVolumeIfExists(ctx.client, `${c.name}-probe-clone`);
        } finally {
          await deleteVolumeIfExists(ctx.client, `${c.name}-probe`);
        }
      });
      if (notServed === undefined) {
        ctx.log("  uploading the source volume");
        await ensureUploaded(ctx.client, SOURCE_VOLUME, rawSource, virtual);
        if (c.from === "qcow2") {
          await deleteVolumeIfExists(ctx.client, sourceVolume);
          await cloneVolumeFull(ctx.client, SOURCE_VOLUME, sourceVolume, "qcow2");
        }
      }

      const compare = (out: string) => () => {
        // -U: the server holds image locks on its volumes; compare only reads.
        runQuiet(["qemu-img", "compare", "-U", "-q", "-f", c.from, "-F", c.to, source, out]);
        return Promise.resolve();
      };
      const peer: Contestant = {
        side: "peer",
        label: `qemu-img convert -f ${c.from} -O ${c.to} SRC DST (+ fsync DST)`,
        before: () => removeAll([peerOut]),
        async run() {
          let rss: number | undefined;
          const seconds = await timed(async () => {
            rss = (await runCommand(["qemu-img", "convert", "-f", c.from, "-O", c.to, source, peerOut]))
              .peakRssBytes;
            await durable(peerOut);
          });
          return { seconds, peakRssBytes: rss };
        },
        check: compare(peerOut),
        after: () => removeAll([peerOut]),
      };
      const server: Contestant = {
        side: "server",
        label: `CloneVolume(FULL, format=${c.to}) of a ${c.from} volume over gRPC`,
        ...(notServed === undefined ? {} : { unavailable: notServed }),
        before: () => deleteVolumeIfExists(ctx.client, target),
        async run() {
          const seconds = await timed(async () => {
            await cloneVolumeFull(ctx.client, sourceVolume, target, c.to);
            await durable(targetFile);
          });
          return { seconds };
        },
        check: compare(targetFile),
        after: () => deleteVolumeIfExists(ctx.client, target),
      };
      const engine: Contestant = {
        side: "engine",
        label: `create ${c.to} + copyImage(${c.from} → ${c.to}) + flush`,
        before: () => removeAll([engineOut]),
        async run() {
          const seconds = await timed(async () => {
            await engineCopy(source, c.from, engineOut, c.to, virtual);
            await durable(engineOut);
          });
          return { seconds };
        },
        check: compare(engineOut),
        after: () => removeAll([engineOut]),
      };
      return {
        contestants: [peer, server, engine],
        bytes: data,
        parameters: { virtualBytes: virtual, dataBytes: data, from: c.from, to: c.to },
        teardown: async () => {
          await removeAll([peerOut, engineOut]);
          await deleteVolumeIfExists(ctx.client, target);
        },
      };
    },
  };
}

/** What CloneVolume FULL does minus the catalog: open the source, create the target, copy, flush. */
export async function engineCopy(
  source: string,
  from: FormatName,
  target: string,
  to: FormatName,
  size: number,
): Promise<void> {
  const src = await engineOpen(source, from, true);
  try {
    await engineCreate(target, to, { size, prealloc: "off" });
    // As CloneVolume FULL opens its target: a raw one is filled with O_DIRECT writes, others with write-behind.
    const dst = await engineOpen(target, to, false, {
      directWrites: to === "raw",
      writeBehindBytes: BULK_FILL_WRITE_BEHIND_BYTES,
    });
    try {
      await copyImage(src, dst);
    } finally {
      await dst.close();
    }
  } finally {
    await src.close();
  }
}

export const copyWorkloads: Workload[] = [
  copyWorkload({ name: "copy-raw-qcow2", from: "raw", to: "qcow2" }),
  copyWorkload({ name: "copy-qcow2-raw", from: "qcow2", to: "raw" }),
];
