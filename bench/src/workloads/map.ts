import path from "node:path";
import { mapExtents, writeAt } from "@vdisk/engine";
import type { VdiskClient, WritePiece } from "@vdisk/sdk";
import { engineCreate, engineOpen } from "../engine-access.js";
import { removeAll, runCommand } from "../util/proc.js";
import { SeededBytes, SeededRandom } from "../util/random-data.js";
import { KiB, poolFile, scaledCount, TiB, timed } from "./common.js";
import { createVolume, deleteVolumeIfExists, servedOrReason } from "./server-ops.js";
import type { BenchContext, Contestant, PreparedWorkload, Workload } from "./types.js";

const VIRTUAL = TiB;
const EXTENT = 64 * KiB;
const EXTENTS = 20_000;
const VOLUME = "map-1t";

/** Seeded distinct extent offsets, in a seeded random order (so host offsets are scattered too). */
function extentOffsets(count: number): number[] {
  const rng = new SeededRandom("map-extents");
  const slots = VIRTUAL / EXTENT;
  return rng.shuffle(rng.distinct(count, slots).map((slot) => slot * EXTENT));
}

async function buildWithEngine(file: string, offsets: readonly number[]): Promise<void> {
  await engineCreate(file, "qcow2", { size: VIRTUAL, prealloc: "off" });
  const image = await engineOpen(file, "qcow2", false);
  try {
    const data = new SeededBytes("map-data").next(EXTENT);
    let next = 0;
    const worker = async () => {
      while (next < offsets.length) {
        const offset = offsets[next++] as number;
        await writeAt(image, offset, data);
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
  } finally {
    await image.close();
  }
}

async function buildThroughApi(client: VdiskClient, offsets: readonly number[]): Promise<void> {
  await deleteVolumeIfExists(client, VOLUME);
  await createVolume(client, { name: VOLUME, format: "qcow2", capacityBytes: VIRTUAL });
  const data = new SeededBytes("map-data").next(EXTENT);
  const pieces: WritePiece[] = offsets.map((offset) => ({ offset, data }));
  await client.writeVolume(VOLUME, pieces);
}

/** Data extents in `qemu-img map --output=json` output. */
function countDataExtents(json: string): number {
  const extents = JSON.parse(json) as { data: boolean }[];
  return extents.filter((e) => e.data).length;
}

export const mapWorkload: Workload = {
  name: "map-1t",
  title: "allocation map of a 1 TiB qcow2 holding 20 000 scattered 64 KiB extents",
  peer: "qemu-img map --output=json",
  async prepare(ctx: BenchContext): Promise<PreparedWorkload> {
    const count = scaledCount(EXTENTS, ctx.scale, 10);
    const offsets = extentOffsets(count);
    // Served: the image is built through the API and all three map the pool file. Not served: the engine
    // builds it in the work directory and the peer and the engine map that file.
    const notServed = await servedOrReason(async () => {
      await createVolume(ctx.client, { name: `${VOLUME}-probe`, format: "qcow2", capacityBytes: 1 << 20 });
      await deleteVolumeIfExists(ctx.client, `${VOLUME}-probe`);
    });
    let file: string;
    if (notServed === undefined) {
      ctx.log(`  writing ${count} extents through WriteVolume`);
      await buildThroughApi(ctx.client, offsets);
      file = poolFile(ctx.poolDir, VOLUME, "qcow2");
    } else {
      file = path.join(ctx.workDir, "map-1t.qcow2");
      await removeAll([file]);
      ctx.log(`  writing ${count} extents with the engine`);
      await buildWithEngine(file, offsets);
    }
    let expected: number | undefined;
    const agree = (what: string, n: number) => {
      if (expected === undefined) expected = n;
      else if (n !== expected) throw new Error(`${what} found ${n} data extents, the peer ${expected}`);
    };

    const peer: Contestant = {
      side: "peer",
      label: "qemu-img map -U --output=json -f qcow2 FILE (-U: the server may hold the image open)",
      async run() {
        let out = "";
        let rss: number | undefined;
        const seconds = await timed(async () => {
          const r = await runCommand(["qemu-img", "map", "-U", "--output=json", "-f", "qcow2", file]);
          out = r.stdout;
          rss = r.peakRssBytes;
        });
        agree("qemu-img map", countDataExtents(out));
        return { seconds, peakRssBytes: rss };
      },
    };
    const server: Contestant = {
      side: "server",
      label: "GetAllocationMap stream over gRPC (all extents received)",
      ...(notServed === undefined ? {} : { unavailable: notServed }),
      async run() {
        let data = 0;
        const seconds = await timed(async () => {
          for await (const extent of ctx.client.getAllocationMap(VOLUME)) if (extent.data) data++;
        });
        agree("GetAllocationMap", data);
        return { seconds };
      },
    };
    const engine: Contestant = {
      side: "engine",
      label: "open qcow2 read-only + mapExtents + close",
      async run() {
        let data = 0;
        const seconds = await timed(async () => {
          const image = await engineOpen(file, "qcow2", true);
          try {
            for await (const extent of mapExtents(image)) if (extent.data) data++;
          } finally {
            await image.close();
          }
        });
        agree("engine mapExtents", data);
        return { seconds };
      },
    };
    return {
      contestants: [peer, server, engine],
      parameters: {
        virtualBytes: VIRTUAL,
        extents: count,
        extentBytes: EXTENT,
        builtBy: notServed === undefined ? "WriteVolume" : "engine",
      },
      teardown: async () => {
        if (notServed !== undefined) await removeAll([file]);
        await deleteVolumeIfExists(ctx.client, VOLUME);
      },
    };
  },
};
