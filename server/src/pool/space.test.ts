import { execFile } from "node:child_process";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { availableBytes, newImageBytes, requireSpace, SPACE_RESERVE_BYTES } from "./space.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "vdisk-space-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("admission estimates", () => {
  // qemu-img is the oracle for what a new qcow2 really takes: the estimate must cover it without
  // refusing far more than needed.
  for (const prealloc of ["off", "metadata"] as const) {
    for (const capacity of [2 * MiB, 1024 * MiB, 16 * 1024 * MiB]) {
      it(`covers qemu-img's qcow2 with preallocation=${prealloc}, ${capacity / MiB} MiB`, async () => {
        const file = join(dir, `q-${prealloc}-${capacity}`);
        await run("qemu-img", [
          "create",
          "-q",
          "-f",
          "qcow2",
          "-o",
          `preallocation=${prealloc}`,
          file,
          String(capacity),
        ]);
        const used = (await stat(file)).blocks * 512;
        const estimate = newImageBytes({
          format: "qcow2",
          capacity,
          clusterSize: 0,
          prealloc,
          allocationBytes: undefined,
        });
        expect(estimate).toBeGreaterThanOrEqual(used);
        expect(estimate).toBeLessThanOrEqual(used * 1.5 + 256 * 1024);
      });
    }
  }

  it("counts preallocated data in full for FALLOC and FULL, and only the first allocation_bytes when given", () => {
    const raw = { format: "raw" as const, capacity: 8 * MiB, clusterSize: 0, allocationBytes: undefined };
    expect(newImageBytes({ ...raw, prealloc: "off" })).toBe(0);
    expect(newImageBytes({ ...raw, prealloc: "falloc" })).toBe(8 * MiB);
    expect(newImageBytes({ ...raw, prealloc: "full", allocationBytes: MiB })).toBe(MiB);
    expect(newImageBytes({ ...raw, format: "qcow2", prealloc: "full" })).toBeGreaterThan(8 * MiB);
  });

  it("refuses with NO_SPACE / INSUFFICIENT_SPACE when the estimate and the reserve don't fit", async () => {
    expect(await availableBytes(dir)).toBeGreaterThan(SPACE_RESERVE_BYTES);
    await expect(requireSpace(dir, 0, "a test")).resolves.toBeUndefined();
    // Far beyond any disk: the machine is shared, so free space moves between two statfs calls.
    await expect(requireSpace(dir, 2 ** 60, "a test")).rejects.toMatchObject({
      code: "NO_SPACE",
      reason: "INSUFFICIENT_SPACE",
    });
  });
});
