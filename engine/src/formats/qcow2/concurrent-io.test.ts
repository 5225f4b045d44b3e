import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BlockImage } from "../../block-image.js";
import { createImage, openImage, qemu, requireQemu, rng } from "./oracle-support.js";

/**
 * Requests in flight at once (data I/O runs outside the image lock): allocating writes into the same
 * cluster and into adjacent ones, writes spanning cluster boundaries, zero writes, flushes and reads,
 * all issued together. Every request covers its own bytes, so the result is deterministic: it must read
 * back, match a raw copy byte for byte (qemu-img compare) and pass qemu-img check.
 */

const dir = join("/tmp", `vdisk-qcow2-concurrent-${process.pid}`);
const MiB = 1024 * 1024;

beforeAll(() => {
  requireQemu();
  mkdirSync(dir, { recursive: true });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Op =
  | { kind: "write"; offset: number; data: Buffer }
  | { kind: "zero"; offset: number; length: number }
  | { kind: "flush" };

function pattern(seed: number, length: number): Buffer {
  const next = rng(seed);
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = 1 + Math.floor(next() * 255);
  return b;
}

/** Issues every op at once; reads of already-written ranges run alongside. */
async function runConcurrently(img: BlockImage, ops: Op[], expected: Buffer): Promise<void> {
  const pending = ops.map(async (op) => {
    if (op.kind === "write") {
      await img.write(op.offset, op.data);
      // Read our own range back while other requests are still in flight.
      const back = Buffer.alloc(op.data.length);
      await img.read(op.offset, back);
      expect(back.equals(op.data)).toBe(true);
    } else if (op.kind === "zero") {
      await img.writeZeroes(op.offset, op.length);
    } else {
      await img.flush();
    }
  });
  await Promise.all(pending);
  for (const op of ops) {
    if (op.kind === "write") op.data.copy(expected, op.offset);
    if (op.kind === "zero") expected.fill(0, op.offset, op.offset + op.length);
  }
}

async function verify(path: string, expected: Buffer): Promise<void> {
  const img = await openImage(path, true);
  try {
    const back = Buffer.alloc(expected.length);
    await img.read(0, back);
    expect(back.equals(expected)).toBe(true);
  } finally {
    await img.close();
  }
  const check = qemu("qemu-img", ["check", "-f", "qcow2", path]);
  expect({ code: check.code, out: check.stdout }).toMatchObject({ code: 0 });
  const raw = `${path}.raw`;
  writeFileSync(raw, expected);
  expect(qemu("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", path, raw]).code).toBe(0);
}

describe("qcow2 requests in flight together", () => {
  it("allocating 4 KiB writes into the same cluster and adjacent clusters", async () => {
    const cs = 65536;
    const size = 4 * MiB;
    const path = join(dir, "same-and-adjacent.qcow2");
    const img = await createImage(path, { size, prealloc: "off", clusterSize: cs });
    const expected = Buffer.alloc(size);
    const ops: Op[] = [];
    // Cluster 0: all sixteen 4 KiB blocks at once, in shuffled order.
    const order = Array.from({ length: 16 }, (_, i) => i);
    const next = rng(7);
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(next() * (i + 1));
      [order[i], order[j]] = [order[j] as number, order[i] as number];
    }
    for (const block of order) ops.push({ kind: "write", offset: block * 4096, data: pattern(block, 4096) });
    // Clusters 1..8: one 4 KiB write each, at different places in each cluster.
    for (let c = 1; c <= 8; c++)
      ops.push({ kind: "write", offset: c * cs + (c % 16) * 4096, data: pattern(100 + c, 4096) });
    // Writes across cluster boundaries (two new clusters each) beside writes inside both halves.
    for (const c of [10, 12]) {
      ops.push({ kind: "write", offset: (c + 1) * cs - 4096, data: pattern(200 + c, 8192) });
      ops.push({ kind: "write", offset: c * cs, data: pattern(300 + c, 4096) });
      ops.push({ kind: "write", offset: (c + 1) * cs + 8192, data: pattern(400 + c, 4096) });
    }
    // A whole-cluster write next to partial ones, and flushes while all this is in flight.
    ops.push({ kind: "write", offset: 14 * cs, data: pattern(500, cs) });
    ops.push({ kind: "write", offset: 15 * cs + 512, data: pattern(501, 1000) });
    ops.splice(5, 0, { kind: "flush" });
    ops.splice(20, 0, { kind: "flush" });
    await runConcurrently(img, ops, expected);
    // Second round into the now allocated clusters (in-place writes) with zeroing beside them.
    const round2: Op[] = [
      { kind: "write", offset: 4096, data: pattern(600, 4096) },
      { kind: "zero", offset: 8 * cs, length: cs },
      { kind: "write", offset: 2 * cs + 3 * 4096, data: pattern(601, 4096) },
      { kind: "write", offset: cs - 512, data: pattern(602, 1024) },
      { kind: "flush" },
    ];
    await runConcurrently(img, round2, expected);
    await img.close();
    await verify(path, expected);
  });

  for (const cs of [512, 4096, 65536]) {
    it(`random concurrent batches, ${cs}-byte clusters`, async () => {
      const size = 2 * MiB;
      const path = join(dir, `random-${cs}.qcow2`);
      const img = await createImage(path, { size, prealloc: "off", clusterSize: cs });
      const expected = Buffer.alloc(size);
      const next = rng(cs);
      const blocks = size / 512;
      for (let batch = 0; batch < 6; batch++) {
        // Disjoint ranges within a batch, often sharing clusters: 32 requests in flight.
        const taken = new Uint8Array(blocks);
        const ops: Op[] = [];
        while (ops.length < 32) {
          const start = Math.floor(next() * blocks);
          const count = 1 + Math.floor(next() * (next() < 0.8 ? 8 : 300));
          if (start + count > blocks || taken.subarray(start, start + count).some((t) => t === 1)) continue;
          taken.fill(1, start, start + count);
          const offset = start * 512;
          const length = count * 512;
          const r = next();
          if (r < 0.08) ops.push({ kind: "flush" });
          else if (r < 0.16) ops.push({ kind: "zero", offset, length });
          else ops.push({ kind: "write", offset, data: pattern(batch * 1000 + ops.length, length) });
        }
        await runConcurrently(img, ops, expected);
      }
      await img.close();
      await verify(path, expected);
    });
  }
});
