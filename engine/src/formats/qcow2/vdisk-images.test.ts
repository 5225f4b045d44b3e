import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { BlockImage, CreateOptions } from "../../block-image.js";
import type { PreallocMode } from "../../types.js";
import { makeLayout } from "./layout.js";
import {
  createImage,
  openImage,
  qemu,
  qemuMap,
  qemuOk,
  requireQemu,
  runWorkload,
  Shadow,
  vdiskMap,
} from "./oracle-support.js";

const dir = join("/tmp", `vdisk-qcow2-created-${process.pid}`);

beforeAll(() => {
  requireQemu();
  mkdirSync(dir, { recursive: true });
});
afterAll(() => {
  if (!process.env.KEEP_QCOW2_TEST_FILES) rmSync(dir, { recursive: true, force: true });
});

interface Config {
  name: string;
  size: number;
  clusterSize: number;
  compat: "0.10" | "1.1";
  refcountBits?: number;
  lazy?: boolean;
  prealloc?: PreallocMode;
  preallocBytes?: number;
  extendedL2?: boolean;
}

const MiB = 1024 * 1024;
const configs: Config[] = [
  { name: "v3 64K", size: 1024 * MiB, clusterSize: 65536, compat: "1.1" },
  { name: "v2 64K", size: 1024 * MiB, clusterSize: 65536, compat: "0.10" },
  { name: "v3 512B", size: 4 * MiB, clusterSize: 512, compat: "1.1" },
  { name: "v2 512B", size: 4 * MiB, clusterSize: 512, compat: "0.10" },
  { name: "v3 4K refcount64", size: 16 * MiB, clusterSize: 4096, compat: "1.1", refcountBits: 64 },
  { name: "v3 4K refcount1", size: 16 * MiB, clusterSize: 4096, compat: "1.1", refcountBits: 1 },
  { name: "v3 2M refcount8", size: 64 * MiB, clusterSize: 2 * MiB, compat: "1.1", refcountBits: 8 },
  { name: "v3 64K lazy refcounts", size: 1024 * MiB, clusterSize: 65536, compat: "1.1", lazy: true },
  { name: "v3 metadata", size: 64 * MiB, clusterSize: 65536, compat: "1.1", prealloc: "metadata" },
  { name: "v3 falloc", size: 64 * MiB, clusterSize: 65536, compat: "1.1", prealloc: "falloc" },
  { name: "v3 full", size: 32 * MiB, clusterSize: 65536, compat: "1.1", prealloc: "full" },
  { name: "v2 metadata 4K", size: 16 * MiB, clusterSize: 4096, compat: "0.10", prealloc: "metadata" },
  { name: "v2 full 512B", size: 2 * MiB, clusterSize: 512, compat: "0.10", prealloc: "full" },
  { name: "v3 extended L2 32K", size: 512 * MiB, clusterSize: 32768, compat: "1.1", extendedL2: true },
  {
    name: "v3 extended L2 metadata",
    size: 32 * MiB,
    clusterSize: 65536,
    compat: "1.1",
    extendedL2: true,
    prealloc: "metadata",
  },
  {
    name: "v3 metadata prefix",
    size: 64 * MiB,
    clusterSize: 65536,
    compat: "1.1",
    prealloc: "metadata",
    preallocBytes: 5 * MiB + 3,
  },
];

function createOptions(c: Config, backing?: CreateOptions["backing"]): CreateOptions {
  return {
    size: c.size,
    prealloc: c.prealloc ?? "off",
    clusterSize: c.clusterSize,
    ...(c.preallocBytes !== undefined ? { preallocBytes: c.preallocBytes } : {}),
    qcow2: {
      compat: c.compat,
      ...(c.refcountBits ? { refcountBits: c.refcountBits } : {}),
      lazyRefcounts: c.lazy === true,
      extendedL2: c.extendedL2 === true,
    },
    ...(backing ? { backing } : {}),
  };
}

function expectQemuClean(path: string): void {
  const r = qemu("qemu-img", ["check", "-f", "qcow2", "--output=json", path]);
  const report = JSON.parse(r.stdout || "{}") as Record<string, unknown>;
  expect({
    code: r.code,
    corruptions: report.corruptions ?? 0,
    leaks: report.leaks ?? 0,
    stderr: r.stderr,
  }).toEqual({
    code: 0,
    corruptions: 0,
    leaks: 0,
    stderr: "",
  });
}

async function expectMapsEqual(path: string, open: () => Promise<BlockImage[]>): Promise<void> {
  const chain = await open();
  try {
    expect(await vdiskMap(chain[0]!)).toEqual(qemuMap(path));
  } finally {
    for (const img of chain) await img.close();
  }
}

describe("vdisk-created qcow2 images pass qemu-img", () => {
  for (const c of configs) {
    it(c.name, async () => {
      const path = join(dir, `${c.name.replace(/\W+/g, "_")}.qcow2`);
      const shadow = new Shadow(`${path}.raw`, c.size);
      const img = await createImage(path, createOptions(c));
      const layout = makeLayout(Math.log2(c.clusterSize), 4, c.extendedL2 === true);
      await runWorkload(img, shadow, {
        seed: c.size ^ c.clusterSize,
        ops: 40,
        clusterSize: c.clusterSize,
        l2Coverage: layout.l2Coverage,
        discardZeroes: true,
      });
      await img.close();
      shadow.close();

      expectQemuClean(path);
      const info = JSON.parse(qemuOk("qemu-img", ["info", "--output=json", "-f", "qcow2", path])) as Record<
        string,
        unknown
      >;
      expect(info["virtual-size"]).toBe(c.size);
      expect(info["cluster-size"]).toBe(c.clusterSize);
      const specific = (info["format-specific"] as { data: Record<string, unknown> }).data;
      expect(specific.compat).toBe(c.compat);
      if (c.compat === "1.1") {
        expect(specific["refcount-bits"]).toBe(c.refcountBits ?? 16);
        expect(specific["lazy-refcounts"]).toBe(c.lazy === true);
      }
      expect(qemu("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", path, shadow.path]).code).toBe(0);
      await expectMapsEqual(path, async () => [await openImage(path, true)]);
    });
  }

  for (const compat of ["1.1", "0.10"] as const) {
    it(`chain of 3 (compat ${compat})`, async () => {
      const size = 8 * MiB;
      const cs = 4096;
      const layout = makeLayout(12, 4, false);
      const shadow = new Shadow(join(dir, `chain-${compat}.raw`), size);
      const names = ["base", "mid", "top"].map((n) => join(dir, `chain-${compat}-${n}.qcow2`));
      const chain: BlockImage[] = [];
      for (let depth = 0; depth < 3; depth++) {
        const below = chain[depth - 1];
        // The middle layer is two clusters shorter: the top reads zeros there, not the base's data.
        const layerSize = depth === 1 ? size - 2 * cs : size;
        const link = {
          fileName: `chain-${compat}-${["base", "mid"][depth - 1]}.qcow2`,
          format: "qcow2" as const,
        };
        const backing = below ? { image: below, link } : undefined;
        const img = await createImage(
          names[depth]!,
          createOptions({ name: "", size: layerSize, clusterSize: cs, compat }, backing),
        );
        chain.push(img);
        await runWorkload(img, shadow, {
          seed: 7 + depth,
          ops: 30,
          clusterSize: cs,
          l2Coverage: layout.l2Coverage,
          discardZeroes: compat === "1.1" || depth === 0,
        });
        if (depth === 1) shadow.zero(size - 2 * cs, 2 * cs); // the shorter middle layer hides the base's tail
      }
      for (const img of chain.reverse()) await img.close();
      shadow.close();
      for (const n of names) expectQemuClean(n);
      const info = JSON.parse(
        qemuOk("qemu-img", ["info", "--output=json", "-f", "qcow2", names[2]!]),
      ) as Record<string, unknown>;
      expect(info["backing-filename"]).toBe(`chain-${compat}-mid.qcow2`);
      expect(info["backing-filename-format"]).toBe("qcow2");
      expect(qemu("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", names[2]!, shadow.path]).code).toBe(0);
      await expectMapsEqual(names[2]!, async () => {
        const base = await openImage(names[0]!, true);
        const mid = await openImage(names[1]!, true, base);
        const top = await openImage(names[2]!, true, mid);
        return [top, mid, base];
      });
    });
  }
});
