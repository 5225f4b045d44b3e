import path from "node:path";
import { readAt, writeAt } from "@vdisk/engine";
import { engineOpen } from "../engine-access.js";
import { removeAll, runCommand, runQuiet } from "../util/proc.js";
import { durable, GiB, KiB, poolFile, scaledCount, timed } from "./common.js";
import { createVolume, deleteVolumeIfExists, servedOrReason } from "./server-ops.js";
import type { BenchContext, Contestant, PreparedWorkload, Workload } from "./types.js";

const REQUESTS = 200_000;
const BLOCK = 4 * KiB;
const STEP = 64 * KiB;
const DEPTH = 32;
const PATTERN = 0xa5;

/** Page-cache handling of the peer: vdisk has no O_DIRECT path, so "writeback" treats both alike. */
export type PeerCache = "writeback" | "none";

interface SmallIoCase {
  name: string;
  write: boolean;
}

function imageSize(requests: number): number {
  return Math.max(1, Math.ceil((requests * STEP) / GiB)) * GiB;
}

/** Runs `count` requests at offsets i×STEP with `depth` in flight, like qemu-img bench's request loop. */
async function inFlight(
  count: number,
  depth: number,
  request: (offset: number, slot: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async (slot: number) => {
    while (next < count) {
      const i = next++;
      await request(i * STEP, slot);
    }
  };
  await Promise.all(Array.from({ length: Math.min(depth, count) }, (_, slot) => worker(slot)));
}

function smallIoWorkload(c: SmallIoCase, peerCache: () => PeerCache): Workload {
  const verb = c.write ? "writes" : "reads";
  return {
    name: c.name,
    title: `${REQUESTS} ${c.write ? "allocating writes" : "reads"} of 4 KiB, ${DEPTH} in flight, one per 64 KiB cluster, qcow2`,
    peer: `qemu-img bench ${c.write ? "-w " : ""}-c N -d ${DEPTH} -s ${BLOCK} -S ${STEP} -f qcow2`,
    async prepare(ctx: BenchContext): Promise<PreparedWorkload> {
      const count = scaledCount(REQUESTS, ctx.scale, 100);
      const size = imageSize(count);
      const cache = peerCache();
      const peerFile = path.join(ctx.workDir, `${c.name}-peer.qcow2`);
      const engineFile = path.join(ctx.workDir, `${c.name}-engine.qcow2`);
      const readSource = path.join(ctx.workDir, `${c.name}-source.qcow2`);
      const volume = `${c.name}-vol`;
      const benchArgs = (file: string, write = c.write) => [
        "qemu-img",
        "bench",
        ...(write ? ["-w", `--pattern=${PATTERN}`] : []),
        "-c",
        String(count),
        "-d",
        String(DEPTH),
        "-s",
        String(BLOCK),
        "-S",
        String(STEP),
        "-f",
        "qcow2",
        "-t",
        cache,
        file,
      ];
      const freshImage = (file: string) => async () => {
        await removeAll([file]);
        runQuiet(["qemu-img", "create", "-q", "-f", "qcow2", file, String(size)]);
      };
      if (!c.write) {
        // Reads hit clusters that exist: the image the write test makes, built once by the peer.
        await freshImage(readSource)();
        runQuiet(benchArgs(readSource, true));
      }
      const target = c.write ? undefined : readSource;

      const notServed = c.write
        ? await servedOrReason(async () => {
            await createVolume(ctx.client, {
              name: `${c.name}-probe`,
              format: "qcow2",
              capacityBytes: 1 << 20,
            });
            await deleteVolumeIfExists(ctx.client, `${c.name}-probe`);
          })
        : "not measured: there is no random-read RPC; ReadVolume per 4 KiB request would time call set-up, not reads";

      const peer: Contestant = {
        side: "peer",
        label: `${benchArgs("FILE").join(" ")}`,
        ...(c.write ? { before: freshImage(peerFile) } : {}),
        async run() {
          let rss: number | undefined;
          const file = target ?? peerFile;
          const seconds = await timed(async () => {
            rss = (await runCommand(benchArgs(file))).peakRssBytes;
            if (c.write) await durable(file);
          });
          return { seconds, peakRssBytes: rss };
        },
        ...(c.write ? { after: () => removeAll([peerFile]) } : {}),
      };
      const block = Buffer.alloc(BLOCK, PATTERN);
      const server: Contestant = {
        side: "server",
        label: `WriteVolume over gRPC: one stream of ${count} 4 KiB chunks (pipelined)`,
        ...(notServed === undefined ? {} : { unavailable: notServed }),
        async before() {
          await deleteVolumeIfExists(ctx.client, volume);
          await createVolume(ctx.client, { name: volume, format: "qcow2", capacityBytes: size });
        },
        async run() {
          const pieces = function* () {
            for (let i = 0; i < count; i++) yield { offset: i * STEP, data: block };
          };
          const seconds = await timed(async () => {
            await ctx.client.writeVolume(volume, pieces());
            await durable(poolFile(ctx.poolDir, volume, "qcow2"));
          });
          return { seconds };
        },
        after: () => deleteVolumeIfExists(ctx.client, volume),
      };
      const engine: Contestant = {
        side: "engine",
        label: `open + ${count} ${c.write ? "writeAt" : "readAt"} of 4 KiB (${DEPTH} promises in flight) + flush + close`,
        ...(c.write ? { before: freshImage(engineFile) } : {}),
        async run() {
          const file = target ?? engineFile;
          const buffers = Array.from({ length: DEPTH }, () => Buffer.alloc(BLOCK));
          const seconds = await timed(async () => {
            const image = await engineOpen(file, "qcow2", !c.write);
            try {
              await inFlight(count, DEPTH, async (offset, slot) => {
                if (c.write) await writeAt(image, offset, block);
                else await readAt(image, offset, buffers[slot] as Buffer);
              });
            } finally {
              await image.close();
            }
            if (c.write) await durable(file);
          });
          if (!c.write && !(buffers[0] as Buffer).equals(block))
            throw new Error("engine read back unexpected bytes");
          return { seconds };
        },
        ...(c.write
          ? {
              check: async () => void runQuiet(["qemu-img", "check", "-q", "-f", "qcow2", engineFile]),
              after: () => removeAll([engineFile]),
            }
          : {}),
      };
      return {
        contestants: [peer, server, engine],
        operations: count,
        bytes: count * BLOCK,
        parameters: {
          requests: count,
          blockBytes: BLOCK,
          stepBytes: STEP,
          depth: DEPTH,
          imageBytes: size,
          peerCache: cache,
          [verb]: count,
        },
        teardown: async () => {
          await removeAll([peerFile, engineFile, readSource]);
          await deleteVolumeIfExists(ctx.client, volume);
        },
      };
    },
  };
}

export function smallIoWorkloads(peerCache: () => PeerCache): Workload[] {
  return [
    smallIoWorkload({ name: "write-4k", write: true }, peerCache),
    smallIoWorkload({ name: "read-4k", write: false }, peerCache),
  ];
}
