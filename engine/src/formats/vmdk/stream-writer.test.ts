import { inflateSync } from "node:zlib";
import { describe, expect, test } from "vitest";
import { GD_AT_END, parseSparseHeader, SECTOR_SIZE } from "./header.js";
import { createStreamOptimizedWriter, inspectVmdk } from "./index.js";
import { readU32, readU64 } from "./le.js";
import { MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT, parseMetadataMarker } from "./markers.js";
import { pattern } from "./vmdk-test-helpers.js";

async function produce(size: number, grains: [number, Uint8Array][]): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const writer = createStreamOptimizedWriter({ size, write: async (b) => void chunks.push(b.slice()) });
  for (const [index, data] of grains) await writer.writeGrain(index, data);
  await writer.finish();
  return Buffer.concat(chunks);
}

const GRAIN = 64 * 1024;

describe("streamOptimized writer output", () => {
  test("the tail is GD marker + GD, footer marker, footer header, EOS marker", async () => {
    const size = 40 * 1024 * 1024; // two grain tables' worth
    const file = await produce(size, [
      [0, pattern(GRAIN, 1)],
      [3, pattern(GRAIN, 2)],
      [600, pattern(GRAIN, 3)],
    ]);
    expect(file.length % SECTOR_SIZE).toBe(0);
    const sector = (i: number) => file.subarray(i * SECTOR_SIZE, (i + 1) * SECTOR_SIZE);
    const last = file.length / SECTOR_SIZE - 1;

    // The primary header defers to the footer.
    const header = parseSparseHeader(sector(0));
    expect(header.gdOffset).toBe(GD_AT_END);
    expect(header.version).toBe(3);
    expect(header.flags).toBe(0x30001);
    expect(header.compressAlgorithm).toBe(1);

    expect(parseMetadataMarker(sector(last))).toEqual({ value: 0n, size: 0, type: MARKER_EOS });
    expect(sector(last).every((b) => b === 0)).toBe(true);
    const footer = parseSparseHeader(sector(last - 1));
    expect(parseMetadataMarker(sector(last - 2))).toEqual({ value: 1n, size: 0, type: MARKER_FOOTER });
    const gdSector = Number(footer.gdOffset);
    expect({ ...footer, gdOffset: GD_AT_END }).toEqual(header);

    // Two GD entries fit one sector; the GD marker precedes it and the footer marker follows it.
    expect(parseMetadataMarker(sector(gdSector - 1))).toEqual({ value: 1n, size: 0, type: MARKER_GD });
    expect(gdSector + 1).toBe(last - 2);
    const gd = [readU32(sector(gdSector), 0), readU32(sector(gdSector), 4)];
    for (const [table, gtSector] of gd.entries()) {
      expect(parseMetadataMarker(sector(gtSector - 1))).toEqual({ value: 4n, size: 0, type: MARKER_GT });
      const gt = file.subarray(gtSector * SECTOR_SIZE, gtSector * SECTOR_SIZE + 2048);
      const allocated = [...Array(512).keys()]
        .filter((i) => readU32(gt, i * 4) !== 0)
        .map((i) => table * 512 + i);
      expect(allocated).toEqual(table === 0 ? [0, 3] : [600]);
      for (const grainIndex of allocated) {
        const at = readU32(gt, (grainIndex % 512) * 4) * SECTOR_SIZE;
        expect(readU64(file, at)).toBe(BigInt(grainIndex * 128)); // marker lba = guest sector
        const size = readU32(file, at + 8);
        const data = inflateSync(file.subarray(at + 12, at + 12 + size)); // zlib-wrapped (RFC 1950)
        expect(
          Buffer.compare(data, Buffer.from(pattern(GRAIN, grainIndex === 0 ? 1 : grainIndex === 3 ? 2 : 3))),
        ).toBe(0);
      }
    }

    const inspection = inspectVmdk(
      file.subarray(0, 1024 * 1024),
      file.length,
      file.subarray(file.length - 1536),
    );
    expect(inspection).toMatchObject({
      subformat: "streamOptimized",
      virtualSize: size,
      grainSize: GRAIN,
      version: 3,
    });
  });

  test("an empty disk still gets GD, footer and EOS, and all-zero grains are left out", async () => {
    const file = await produce(1024 * 1024, [[2, new Uint8Array(GRAIN)]]);
    const sectors = file.length / SECTOR_SIZE;
    // header + descriptor padded to 64 KiB, GD marker + GD, footer marker, footer, EOS
    expect(sectors).toBe(128 + 2 + 3);
    expect(parseMetadataMarker(file.subarray(file.length - SECTOR_SIZE)).type).toBe(MARKER_EOS);
  });

  test("grains must come in increasing order with the exact length", async () => {
    const writer = createStreamOptimizedWriter({ size: 3 * GRAIN + 512, write: async () => {} });
    await writer.writeGrain(1, pattern(GRAIN, 1));
    await expect(writer.writeGrain(1, pattern(GRAIN, 1))).rejects.toMatchObject({
      reason: "VMDK_BAD_GRAIN_INDEX",
    });
    await expect(writer.writeGrain(2, pattern(100, 1))).rejects.toMatchObject({
      reason: "VMDK_BAD_GRAIN_LENGTH",
    });
    await writer.writeGrain(3, pattern(512, 1)); // the short last grain
    await writer.finish();
    await expect(writer.writeGrain(3, pattern(512, 1))).rejects.toMatchObject({
      reason: "VMDK_WRITER_FINISHED",
    });
  });
});
