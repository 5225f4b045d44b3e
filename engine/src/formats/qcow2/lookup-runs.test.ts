import { describe, expect, it } from "vitest";
import type { BlockImage } from "../../block-image.js";
import { createMemoryFile } from "../../host/memory-file.js";
import type { LayerStatus } from "../../types.js";
import { qcow2Driver } from "./index.js";

/** Small clusters: 512 entries per L2 table, so runs cross table boundaries within a few MiB. */
const CS = 4096;
const CLUSTERS = 4096;

/** A deterministic pseudo-random sequence (tests must not depend on Math.random). */
function lcg(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state / 2 ** 31;
  };
}

/** Appends a status, merging it into the previous one when it continues that run. */
function append(out: LayerStatus[], s: LayerStatus): void {
  const last = out.at(-1);
  const continues =
    last !== undefined &&
    last.allocated === s.allocated &&
    last.data === s.data &&
    last.zero === s.zero &&
    (last.hostOffset === undefined) === (s.hostOffset === undefined) &&
    (last.hostOffset === undefined || s.hostOffset === last.hostOffset + last.length);
  if (continues) last.length += s.length;
  else out.push({ ...s });
}

/** Block status answered one cluster at a time: the lookup never looks past one entry. */
async function clusterByCluster(img: BlockImage, offset: number, length: number): Promise<LayerStatus[]> {
  const out: LayerStatus[] = [];
  for (let pos = offset; pos < offset + length; pos += CS) append(out, await img.blockStatus(pos, CS));
  return out;
}

/**
 * Block status walked with whole-range queries: the lookup scans runs of entries (answers still end
 * at L2 table boundaries, so neighbours are merged the same way).
 */
async function walked(img: BlockImage, offset: number, length: number): Promise<LayerStatus[]> {
  const out: LayerStatus[] = [];
  for (let pos = offset; pos < offset + length; ) {
    const s = await img.blockStatus(pos, offset + length - pos);
    append(out, s);
    pos += s.length;
  }
  return out;
}

describe("qcow2 lookup runs", () => {
  it.each([
    ["v3", { compat: "1.1" as const }],
    ["v2", { compat: "0.10" as const }],
  ])("whole-range block status agrees with cluster-by-cluster answers (%s)", async (_name, qcow2) => {
    const size = CLUSTERS * CS; // 8 L2 tables
    const file = createMemoryFile();
    await qcow2Driver.create(file, { size, prealloc: "off", clusterSize: CS, qcow2 });
    const img = await qcow2Driver.open(file, { readOnly: false });
    const random = lcg(qcow2.compat === "0.10" ? 2 : 3);
    // Runs of data (host-contiguous when written in one request), zeroed and discarded runs, and
    // single clusters in between, so every kind of entry starts, continues and ends a run.
    for (let i = 0; i < 300; i++) {
      const clusters = 1 + Math.floor(random() * 600);
      const at = Math.floor(random() * (CLUSTERS - clusters)) * CS;
      const kind = random();
      if (kind < 0.6) await img.write(at, Buffer.alloc(clusters * CS, i + 1));
      else if (kind < 0.8) await img.writeZeroes(at, clusters * CS, { mayUnmap: random() < 0.5 });
      else await img.discard(at, clusters * CS);
    }
    await img.flush();
    const expected = await clusterByCluster(img, 0, size);
    expect(expected.length).toBeGreaterThan(20);
    expect(await walked(img, 0, size)).toEqual(expected);
    // A query from inside a run answers (the table's part of) the rest of that run.
    let runStart = 0;
    for (const run of expected) {
      if (run.length > 2 * CS) {
        const skip = CS + 7;
        const rest = await walked(img, runStart + skip, run.length - skip);
        const expectedRest: LayerStatus = { ...run, length: run.length - skip };
        if (run.hostOffset !== undefined) expectedRest.hostOffset = run.hostOffset + skip;
        expect(rest).toEqual([expectedRest]);
      }
      runStart += run.length;
    }
    await img.close();
  });
});
