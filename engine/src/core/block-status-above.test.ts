import { describe, expect, it } from "vitest";
import type { Extent } from "../types.js";
import { allocationSummary, mapExtents } from "./allocation-map.js";
import { blockStatusAbove } from "./block-status-above.js";
import { ClusterLayer, type ClusterState } from "./testing/cluster-layer.js";

const C = 4096;

function layer(
  states: string,
  opts: { backing?: ClusterLayer; virtualSize?: number; hostOffsetBase?: number } = {},
) {
  const map: Record<string, ClusterState> = { ".": "unallocated", D: "data", Z: "zero", C: "compressed" };
  const clusters = [...states].map((ch) => map[ch] as ClusterState);
  return new ClusterLayer({ clusterSize: C, clusters, ...opts });
}

async function collect(iter: AsyncIterable<Extent>): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of iter) out.push(e);
  return out;
}

function ext(
  start: number,
  length: number,
  depth: number,
  present: boolean,
  zero: boolean,
  data: boolean,
  offset?: number,
): Extent {
  const e: Extent = { start: start * C, length: length * C, depth, present, zero, data, compressed: false };
  if (offset !== undefined) e.offset = offset;
  return e;
}

describe("blockStatusAbove", () => {
  it("reports the first layer that allocates the run, with its depth", async () => {
    const bottom = layer("DDDD");
    const middle = layer(".Z..", { backing: bottom });
    const top = layer("..D.", { backing: middle });
    expect(await blockStatusAbove(top, undefined, 0, C)).toMatchObject({
      depth: 2,
      present: true,
      status: { data: true },
    });
    expect(await blockStatusAbove(top, undefined, C, C)).toMatchObject({
      depth: 1,
      present: true,
      status: { zero: true },
    });
    expect(await blockStatusAbove(top, undefined, 2 * C, C)).toMatchObject({ depth: 0, present: true });
  });

  it("reports a run no layer allocates at the bottom layer's depth, present=false, zero=true", async () => {
    const bottom = layer("....");
    const top = layer("....", { backing: layer("....", { backing: bottom }) });
    const answer = await blockStatusAbove(top, undefined, 0, 4 * C);
    expect(answer).toMatchObject({
      depth: 2,
      present: false,
      status: { zero: true, data: false, length: 4 * C },
    });
    expect(await blockStatusAbove(bottom, undefined, 0, C)).toMatchObject({
      depth: 0,
      present: false,
      status: { zero: true },
    });
  });

  it("stops above base: a run falling through to base is unknown, not zero", async () => {
    const base = layer("DDDD");
    const mid = layer("D...", { backing: base });
    const top = layer(".D..", { backing: mid });
    expect(await blockStatusAbove(top, mid, 0, C)).toMatchObject({
      depth: 0,
      present: false,
      status: { zero: false, data: false },
    });
    expect(await blockStatusAbove(top, base, 0, C)).toMatchObject({ depth: 1, present: true });
    expect(await blockStatusAbove(top, base, 2 * C, C)).toMatchObject({
      depth: 1,
      present: false,
      status: { zero: false },
    });
    // base and below are never consulted
    expect(base.callsOf("blockStatus")).toHaveLength(0);
  });

  it("rejects a base that is not below the top", async () => {
    const top = layer("....");
    await expect(blockStatusAbove(top, layer("...."), 0, C)).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
    });
    await expect(blockStatusAbove(top, top, 0, C)).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
  });

  it("clamps the run to the query and to every layer walked", async () => {
    const bottom = layer("DDDDDDDD");
    const top = layer("........", { backing: layer("..DDDDDD", { backing: bottom }) });
    // top says 8 clusters unallocated, middle says 2: the answer must be the bottom's data, 2 clusters long
    expect(await blockStatusAbove(top, undefined, 0, 8 * C)).toMatchObject({
      depth: 2,
      status: { length: 2 * C },
    });
    expect(await blockStatusAbove(top, undefined, 0, 100)).toMatchObject({ status: { length: 100 } });
  });

  it("reads past a short backing as unallocated zeros at the depth of the layer above it", async () => {
    const short = layer("DD");
    const top = layer("....", { backing: short });
    expect(await blockStatusAbove(top, undefined, 0, 4 * C)).toMatchObject({
      depth: 1,
      present: true,
      status: { length: 2 * C },
    });
    expect(await blockStatusAbove(top, undefined, 2 * C, 2 * C)).toMatchObject({
      depth: 0,
      present: false,
      status: { zero: true },
    });
  });

  it("validates the range", async () => {
    const top = layer("....");
    await expect(blockStatusAbove(top, undefined, 3 * C, 2 * C)).rejects.toMatchObject({
      code: "OUT_OF_RANGE",
    });
    await expect(blockStatusAbove(top, undefined, -1, 1)).rejects.toMatchObject({ code: "OUT_OF_RANGE" });
    await expect(blockStatusAbove(top, undefined, 0.5, 1)).rejects.toMatchObject({ code: "OUT_OF_RANGE" });
  });
});

describe("mapExtents", () => {
  it("matches qemu-img map for a three-layer chain (as verified with qemu-img 7.2)", async () => {
    // Same shape as: a = data at cluster 0; b = data at 2, zero at 4; c = empty overlay.
    const a = layer("D.......", { hostOffsetBase: 0x50000 });
    const b = layer("..D.Z...", { backing: a, hostOffsetBase: 0x50000 });
    const c = layer("........", { backing: b });
    expect(await collect(mapExtents(c))).toEqual([
      ext(0, 1, 2, true, false, true, 0x50000),
      ext(1, 1, 2, false, true, false),
      ext(2, 1, 1, true, false, true, 0x50000 + 2 * C),
      ext(3, 1, 2, false, true, false),
      ext(4, 1, 1, true, true, false),
      ext(5, 3, 2, false, true, false),
    ]);
  });

  it("merges runs across layer answers but not across depths", async () => {
    const bottom = layer("DDDD");
    const top = layer("DD..", { backing: bottom });
    expect(await collect(mapExtents(top))).toEqual([
      ext(0, 2, 0, true, false, true),
      ext(2, 2, 1, true, false, true),
    ]);
  });

  it("maps a sub-range and honours base", async () => {
    const base = layer("DDDDDDDD");
    const top = layer(".DD.....", { backing: base });
    expect(await collect(mapExtents(top, { start: C / 2, length: 3 * C, base }))).toEqual([
      { start: C / 2, length: C / 2, depth: 0, present: false, zero: false, data: false, compressed: false },
      ext(1, 2, 0, true, false, true),
      { start: 3 * C, length: C / 2, depth: 0, present: false, zero: false, data: false, compressed: false },
    ]);
  });

  it("reports compressed clusters", async () => {
    const top = layer("CC.");
    expect(await collect(mapExtents(top))).toEqual([
      { ...ext(0, 2, 0, true, false, true), compressed: true },
      ext(2, 1, 0, false, true, false),
    ]);
  });

  it("stops with CANCELLED when the signal fires", async () => {
    const top = layer("D.D.D.D.");
    const controller = new AbortController();
    const seen: Extent[] = [];
    await expect(
      (async () => {
        for await (const e of mapExtents(top, { signal: controller.signal })) {
          seen.push(e);
          controller.abort();
        }
      })(),
    ).rejects.toMatchObject({ code: "CANCELLED" });
    expect(seen).toHaveLength(1);
  });

  it("summarises data, zero and unallocated bytes", async () => {
    const bottom = layer("DDZ.....");
    const top = layer("Z..D....", { backing: bottom });
    expect(await allocationSummary(top)).toEqual({
      dataBytes: 2 * C,
      zeroBytes: 2 * C,
      unallocatedBytes: 4 * C,
      allocatedInTopBytes: 2 * C,
    });
  });
});
