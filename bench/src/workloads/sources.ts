import { existsSync } from "node:fs";
import { mkdir, open, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { runQuiet } from "../util/proc.js";
import { SeededBytes, SeededRandom } from "../util/random-data.js";
import { MiB } from "./common.js";

/**
 * Input images shared by several workloads, built once per work directory and reused while their
 * parameters are unchanged (a stamp file records them), so repeated runs skip minutes of set-up.
 */
async function cached(file: string, stamp: string, build: () => Promise<void>): Promise<string> {
  const stampFile = `${file}.stamp`;
  if (existsSync(file) && existsSync(stampFile) && (await readFile(stampFile, "utf8")) === stamp) return file;
  await rm(stampFile, { force: true });
  await rm(file, { force: true });
  await mkdir(path.dirname(file), { recursive: true });
  await build();
  await writeFile(stampFile, stamp);
  return file;
}

/**
 * A sparse raw image of `virtualSize` holding `dataSize` bytes of incompressible seeded data in 1 MiB
 * runs at seeded random 1 MiB-aligned places (the copy workloads' source).
 */
export function scatteredRaw(dir: string, virtualSize: number, dataSize: number): Promise<string> {
  const file = path.join(dir, `scattered-${virtualSize}-${dataSize}.raw`);
  return cached(file, `v1 ${virtualSize} ${dataSize}`, async () => {
    const slots = Math.floor(virtualSize / MiB);
    const runs = Math.min(slots, Math.floor(dataSize / MiB));
    const positions = new SeededRandom("scattered-raw").distinct(runs, slots);
    const bytes = new SeededBytes("scattered-raw");
    const handle = await open(file, "w");
    try {
      await handle.truncate(virtualSize);
      for (const slot of positions) await handle.write(bytes.next(MiB), 0, MiB, slot * MiB);
      await handle.sync();
    } finally {
      await handle.close();
    }
  });
}

/** The same content as a qcow2 image made by qemu-img (64 KiB clusters, defaults). */
export function scatteredQcow2(raw: string): Promise<string> {
  const file = raw.replace(/\.raw$/, ".qcow2");
  return cached(file, `v1 ${raw}`, async () => {
    runQuiet(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, file]);
  });
}

/** A dense raw file of `size` seeded incompressible bytes (the gRPC upload/download data). */
export function denseRaw(dir: string, size: number, seed = "dense"): Promise<string> {
  const file = path.join(dir, `dense-${seed}-${size}.raw`);
  return cached(file, `v1 ${size} ${seed}`, async () => {
    const bytes = new SeededBytes(seed);
    const handle = await open(file, "w");
    try {
      for (let at = 0; at < size; at += 4 * MiB) {
        const n = Math.min(4 * MiB, size - at);
        await handle.write(bytes.next(n), 0, n, at);
      }
      await handle.sync();
    } finally {
      await handle.close();
    }
  });
}
