import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { VolumeOracle } from "./oracle.js";
import { Random } from "./random.js";
import { identifySector, SECTOR, sectorsOf } from "./sectors.js";

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

describe("self-describing sectors", () => {
  it("name their token, and recognise zeros, other offsets, other volumes and torn content", () => {
    const bytes = sectorsOf(42, 10, 3, 7);
    expect(identifySector(bytes, SECTOR, 11, 7)).toEqual({ token: 42 });
    expect(identifySector(new Uint8Array(SECTOR), 0, 5, 7)).toEqual({ token: 0 });
    expect(identifySector(bytes, 0, 11, 7)).toEqual({ garbage: "bytes of sector 10 (token 42)" });
    expect(identifySector(bytes, 0, 10, 8)).toEqual({ garbage: "bytes of volume tag 7 (token 42)" });
    const torn = bytes.slice(0, SECTOR);
    torn[300] = (torn[300] ?? 0) ^ 1;
    expect(identifySector(torn, 0, 10, 7)).toMatchObject({ garbage: expect.stringContaining("torn") });
  });
});

describe("VolumeOracle", () => {
  it("allows old or in-flight content until a flush, then only the flushed content; persists to disk", async () => {
    const dir = await mkdtemp(join(tmpdir(), "vdisk-oracle-"));
    dirs.push(dir);
    const oracle = VolumeOracle.inDirectory(dir, "v", 1, 8 * SECTOR, 16 * SECTOR);
    await oracle.begin({ kind: "data", first: 2, count: 2, token: 5 });
    expect([...oracle.allowedTokens(2)].sort()).toEqual([0, 5]);
    expect([...oracle.allowedTokens(4)]).toEqual([0]);
    const saved = JSON.parse(await readFile(join(dir, "v.oracle.json"), "utf8"));
    expect(saved.pending).toEqual([{ kind: "data", first: 2, count: 2, token: 5 }]);

    await oracle.durable();
    expect([...oracle.allowedTokens(2)]).toEqual([5]);

    // An interrupted shrink: old or new size, and the cut tail may already read as zeros.
    await oracle.begin({ kind: "resize", capacity: 2 * SECTOR });
    expect([...oracle.allowedCapacities()].sort()).toEqual([2 * SECTOR, 8 * SECTOR]);
    expect([...oracle.allowedTokens(3)].sort()).toEqual([0, 5]);
    await oracle.durable();
    expect(oracle.capacity).toBe(2 * SECTOR);
    expect(oracle.tokens[3]).toBe(0);
  });
});

describe("Random", () => {
  it("repeats for a seed and stays in range", () => {
    const a = new Random(9);
    const b = new Random(9);
    const draws = Array.from({ length: 100 }, () => a.int(3, 7));
    expect(draws).toEqual(Array.from({ length: 100 }, () => b.int(3, 7)));
    expect(Math.min(...draws)).toBe(3);
    expect(Math.max(...draws)).toBe(7);
  });
});
