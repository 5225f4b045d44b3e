import path from "node:path";
import type { PreallocMode } from "@vdisk/engine";
import { engineCreate } from "../engine-access.js";
import { removeAll, runCommand } from "../util/proc.js";
import { durable, GiB, humanBytes, poolFile, scaled, timed } from "./common.js";
import { createVolume, deleteVolumeIfExists, servedOrReason, type WireFormat } from "./server-ops.js";
import type { BenchContext, Contestant, PreparedWorkload, Workload } from "./types.js";

interface CreateCase {
  name: string;
  format: WireFormat & ("raw" | "qcow2");
  prealloc: PreallocMode & ("falloc" | "full");
  size: number;
}

function createWorkload(c: CreateCase): Workload {
  const peerCommand = `qemu-img create -f ${c.format} -o preallocation=${c.prealloc}`;
  return {
    name: c.name,
    title: `create ${c.format} ${humanBytes(c.size)}, preallocation ${c.prealloc.toUpperCase()}`,
    peer: peerCommand,
    async prepare(ctx: BenchContext): Promise<PreparedWorkload> {
      const size = scaled(c.size, ctx.scale);
      const peerFile = path.join(ctx.workDir, `${c.name}-peer.${c.format}`);
      const engineFile = path.join(ctx.workDir, `${c.name}-engine.${c.format}`);
      const volume = `${c.name}-vol`;
      const volumeFile = poolFile(ctx.poolDir, volume, c.format);

      const notServed = await servedOrReason(async () => {
        await deleteVolumeIfExists(ctx.client, `${c.name}-probe`);
        await createVolume(ctx.client, {
          name: `${c.name}-probe`,
          format: c.format,
          capacityBytes: 1 << 20,
          preallocation: c.prealloc,
        });
        await deleteVolumeIfExists(ctx.client, `${c.name}-probe`);
      });

      const peer: Contestant = {
        side: "peer",
        label: `${peerCommand} FILE ${size}`,
        before: () => removeAll([peerFile]),
        async run() {
          let rss: number | undefined;
          const seconds = await timed(async () => {
            const r = await runCommand([
              "qemu-img",
              "create",
              "-q",
              "-f",
              c.format,
              "-o",
              `preallocation=${c.prealloc}`,
              peerFile,
              String(size),
            ]);
            rss = r.peakRssBytes;
            await durable(peerFile);
          });
          return { seconds, peakRssBytes: rss };
        },
        after: () => removeAll([peerFile]),
      };
      const server: Contestant = {
        side: "server",
        label: `CreateVolume(format=${c.format}, preallocation=${c.prealloc.toUpperCase()}) over gRPC, job events counted`,
        ...(notServed === undefined ? {} : { unavailable: notServed }),
        before: () => deleteVolumeIfExists(ctx.client, volume),
        async run() {
          let events = 0;
          const seconds = await timed(async () => {
            events = (
              await createVolume(ctx.client, {
                name: volume,
                format: c.format,
                capacityBytes: size,
                preallocation: c.prealloc,
              })
            ).progressEvents;
            await durable(volumeFile);
          });
          return { seconds, progressEvents: events };
        },
        after: () => deleteVolumeIfExists(ctx.client, volume),
      };
      const engine: Contestant = {
        side: "engine",
        label: `${c.format} driver create (prealloc ${c.prealloc}), onProgress calls counted`,
        before: () => removeAll([engineFile]),
        async run() {
          let events = 0;
          const seconds = await timed(async () => {
            await engineCreate(engineFile, c.format, {
              size,
              prealloc: c.prealloc,
              onProgress: () => {
                events++;
              },
            });
            await durable(engineFile);
          });
          return { seconds, progressEvents: events };
        },
        after: () => removeAll([engineFile]),
      };
      return {
        contestants: [peer, server, engine],
        bytes: size,
        parameters: { format: c.format, preallocation: c.prealloc, sizeBytes: size },
        teardown: async () => {
          await removeAll([peerFile, engineFile]);
          await deleteVolumeIfExists(ctx.client, volume);
        },
      };
    },
  };
}

export const createWorkloads: Workload[] = [
  createWorkload({ name: "create-full-qcow2", format: "qcow2", prealloc: "full", size: 4 * GiB }),
  createWorkload({ name: "create-falloc-raw", format: "raw", prealloc: "falloc", size: 10 * GiB }),
  createWorkload({ name: "create-falloc-qcow2", format: "qcow2", prealloc: "falloc", size: 10 * GiB }),
];
