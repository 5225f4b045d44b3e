import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { BlockImage } from "../block-image.js";
import { EngineError } from "../errors.js";
import { qcow2Driver } from "../formats/qcow2/index.js";
import { rawDriver } from "../formats/raw/index.js";
import { GD_AT_END, parseSparseHeader } from "../formats/vmdk/header.js";
import { vmdkDriver } from "../formats/vmdk/index.js";
import { parseFooterTail } from "../formats/vmdk/markers.js";
import { openHostFile } from "../host/node-file.js";
import { makeScratch, ok, qemuMap, run } from "../inspect/io-test-support.js";
import type { FormatName } from "../types.js";
import { type ExportPiece, exportQcow2, exportRaw, exportVmdk } from "./index.js";

const scratch = makeScratch("export");
afterAll(() => scratch.remove());
const p = (name: string) => scratch.path(name);

const SIZE = "4100K"; // not a multiple of 64 KiB: the last cluster/grain is partial

beforeAll(() => {
  // Data at the start, in the middle (unaligned to 64 KiB), a zeroed range and the partial tail.
  const writes = ["write -P 0x11 0 64k", "write -P 0x22 1028k 8k", "write -P 0x33 4096k 4k"];
  ok("qemu-img", ["create", "-f", "raw", p("src.raw"), SIZE]);
  ok("qemu-io", ["-f", "raw", ...writes.flatMap((w) => ["-c", w]), p("src.raw")]);
  ok("qemu-img", ["create", "-f", "qcow2", p("src.qcow2"), SIZE]);
  ok("qemu-io", [
    "-f",
    "qcow2",
    ...[...writes, "write -z 2M 128k"].flatMap((w) => ["-c", w]),
    p("src.qcow2"),
  ]);
  ok("qemu-img", ["convert", "-f", "raw", "-O", "vmdk", p("src.raw"), p("src.vmdk")]);
});

async function openSource(format: FormatName): Promise<BlockImage> {
  const file = await openHostFile(p(`src.${format}`), { readOnly: true });
  const driver = format === "raw" ? rawDriver : format === "qcow2" ? qcow2Driver : vmdkDriver;
  return driver.open(file, { readOnly: true });
}

/** Writes pieces to a file (zero pieces as holes), checking they are contiguous and ascending. */
async function writePieces(pieces: AsyncIterable<ExportPiece>, path: string): Promise<number> {
  const fd = openSync(path, "w");
  let end = 0;
  try {
    for await (const piece of pieces) {
      expect(piece.offset).toBe(end);
      if (piece.zero) {
        expect(piece.length).toBeGreaterThan(0);
        end += piece.length;
      } else {
        writeSync(fd, piece.data, 0, piece.data.length, piece.offset);
        end += piece.data.length;
      }
    }
    ftruncateSync(fd, end);
  } finally {
    closeSync(fd);
  }
  return end;
}

/** Every data extent of the export must overlap data of the source (cluster-rounded): no new data. */
function expectSparsenessKept(
  source: string,
  sourceFormat: string,
  target: string,
  targetFormat: string,
  granularity = 65536,
): void {
  const sourceData = qemuMap(source, sourceFormat).filter((e) => e.data);
  for (const extent of qemuMap(target, targetFormat).filter((e) => e.data)) {
    for (let at = extent.start; at < extent.start + extent.length; at += granularity) {
      const end = Math.min(at + granularity, extent.start + extent.length);
      const covered = sourceData.some((s) => s.start < end && s.start + s.length > at);
      expect(covered, `${target}: data at ${at} where ${source} has none`).toBe(true);
    }
  }
}

type Target = "raw" | "qcow2" | "qcow2-compressed" | "vmdk";

async function exportTo(image: BlockImage, target: Target, path: string): Promise<void> {
  const progress: number[] = [];
  const onProgress = (done: number) => progress.push(done);
  if (target === "raw") await writePieces(exportRaw(image, { chunkSize: 256 * 1024, onProgress }), path);
  else if (target === "qcow2")
    await writePieces(exportQcow2(image, { chunkSize: 256 * 1024, onProgress }), path);
  else if (target === "vmdk") await writePieces(exportVmdk(image, { onProgress }), path);
  else {
    const staging = await openHostFile(`${path}.staging`, { readOnly: false, create: "new" });
    try {
      await writePieces(exportQcow2(image, { compress: true, staging, onProgress }), path);
    } finally {
      await staging.close();
    }
  }
  expect(progress.length).toBeGreaterThan(0);
}

const qemuFormat = (target: Target) => (target === "qcow2-compressed" ? "qcow2" : target);

describe.each(["raw", "qcow2", "vmdk"] as const)("export from %s", (source) => {
  let image: BlockImage;
  beforeAll(async () => {
    image = await openSource(source);
  });
  afterAll(async () => {
    await image.close();
  });

  test.each(["raw", "qcow2", "qcow2-compressed", "vmdk"] as const)(
    "to %s: check clean, compare identical, still sparse",
    async (target) => {
      const out = p(`out-${source}-${target}`);
      await exportTo(image, target, out);
      const format = qemuFormat(target);
      if (format !== "raw") {
        const check = run("qemu-img", ["check", "-f", format, out]);
        expect(check.code, check.stdout + check.stderr).toBe(0);
      }
      const compare = run("qemu-img", ["compare", "-f", source, "-F", format, p(`src.${source}`), out]);
      expect(compare.code, compare.stdout + compare.stderr).toBe(0);
      expectSparsenessKept(p(`src.${source}`), source, out, format);
    },
  );
});

describe("export details", () => {
  test("qcow2 zero clusters are exported with the zero flag (v3), and compressed clusters are compressed", async () => {
    const image = await openSource("qcow2");
    try {
      await exportTo(image, "qcow2", p("zero.qcow2"));
      await exportTo(image, "qcow2-compressed", p("zero-c.qcow2"));
    } finally {
      await image.close();
    }
    const zeroAt2M = (path: string) =>
      qemuMap(path, "qcow2").some(
        (e) =>
          e.start <= 2 * 1024 * 1024 &&
          e.start + e.length > 2 * 1024 * 1024 &&
          e.zero &&
          !e.data &&
          e.present !== false,
      );
    expect(zeroAt2M(p("zero.qcow2"))).toBe(true);
    const info = JSON.parse(ok("qemu-img", ["check", "--output=json", p("zero-c.qcow2")])) as {
      "compressed-clusters"?: number;
    };
    expect(info["compressed-clusters"]).toBeGreaterThan(0);
    const v2 = await openSource("qcow2");
    try {
      await writePieces(exportQcow2(v2, { compat: "0.10" }), p("v2.qcow2"));
    } finally {
      await v2.close();
    }
    expect(run("qemu-img", ["check", p("v2.qcow2")]).code).toBe(0);
    expect(run("qemu-img", ["compare", "-F", "qcow2", p("src.qcow2"), p("v2.qcow2")]).code).toBe(0);
  });

  test("a streamOptimized export ends with footer marker, footer header and EOS marker", async () => {
    const image = await openSource("raw");
    try {
      await exportTo(image, "vmdk", p("tail.vmdk"));
    } finally {
      await image.close();
    }
    const file = readFileSync(p("tail.vmdk"));
    expect(file.length % 512).toBe(0);
    const header = parseSparseHeader(file.subarray(0, 512));
    expect(header.gdOffset).toBe(GD_AT_END);
    const footer = parseFooterTail(file.subarray(file.length - 1536));
    expect(footer.capacity).toBe(header.capacity);
    expect(footer.gdOffset).not.toBe(GD_AT_END);
    expect(file.subarray(file.length - 512).every((b) => b === 0)).toBe(true); // EOS: val 0, size 0, type 0
    // The grain directory marker sits right before the directory the footer names.
    const gdMarker = file.subarray(Number(footer.gdOffset) * 512 - 512);
    expect(gdMarker.readUInt32LE(12)).toBe(2);
  });

  test("raw export never reads or sends the zero runs", async () => {
    const image = await openSource("qcow2");
    const pieces: ExportPiece[] = [];
    try {
      for await (const piece of exportRaw(image, { chunkSize: 64 * 1024 })) pieces.push(piece);
    } finally {
      await image.close();
    }
    const dataBytes = pieces.reduce((n, piece) => n + (piece.zero ? 0 : piece.data.length), 0);
    expect(dataBytes).toBe(64 * 1024 + 64 * 1024 + 4 * 1024); // whole qcow2 clusters holding data
    expect(pieces.some((piece) => piece.zero)).toBe(true);
  });

  test("an aborted signal stops every producer with CANCELLED", async () => {
    const image = await openSource("raw");
    const controller = new AbortController();
    controller.abort();
    try {
      for (const producer of [
        exportRaw(image, { signal: controller.signal }),
        exportQcow2(image, { signal: controller.signal }),
        exportVmdk(image, { signal: controller.signal }),
      ]) {
        const outcome = await (async () => {
          for await (const _ of producer) {
          }
        })().then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(outcome).toBeInstanceOf(EngineError);
        expect((outcome as EngineError).code).toBe("CANCELLED");
      }
    } finally {
      await image.close();
    }
  });
});

describe("qcow2 export geometry", () => {
  beforeAll(() => {
    // Runs that cross L2 table boundaries once clusters are small (4 KiB clusters: one table per 2 MiB).
    ok("qemu-img", ["create", "-f", "qcow2", p("wide.qcow2"), "6M"]);
    const writes = [
      "write -P 0x44 2040k 16k",
      "write -z 3M 2M",
      "write -P 0x55 4092k 12k",
      "write -P 0x66 6140k 4k",
    ];
    ok("qemu-io", ["-f", "qcow2", ...writes.flatMap((w) => ["-c", w]), p("wide.qcow2")]);
  });

  test.each([
    [4096, false],
    [4096, true],
    [512, false],
    [512, true],
    [2 * 1024 * 1024, false],
  ] as const)("cluster size %i (compressed: %s): runs across L2 tables", async (clusterSize, compress) => {
    const file = await openHostFile(p("wide.qcow2"), { readOnly: true });
    const image = await qcow2Driver.open(file, { readOnly: true });
    const out = p(`wide-${clusterSize}-${compress}.qcow2`);
    try {
      if (compress) {
        const staging = await openHostFile(`${out}.staging`, { readOnly: false, create: "new" });
        await writePieces(exportQcow2(image, { clusterSize, compress, staging }), out);
        await staging.close();
      } else {
        await writePieces(exportQcow2(image, { clusterSize, chunkSize: 3 * clusterSize }), out);
      }
    } finally {
      await image.close();
    }
    const check = run("qemu-img", ["check", out]);
    expect(check.code, check.stdout + check.stderr).toBe(0);
    const compare = run("qemu-img", ["compare", "-F", "qcow2", p("wide.qcow2"), out]);
    expect(compare.code, compare.stdout + compare.stderr).toBe(0);
    expectSparsenessKept(p("wide.qcow2"), "qcow2", out, "qcow2", Math.max(65536, clusterSize));
  });

  test("a backing chain is exported flattened", async () => {
    ok("qemu-img", ["create", "-f", "qcow2", "-b", p("wide.qcow2"), "-F", "qcow2", p("top.qcow2")]);
    ok("qemu-io", ["-f", "qcow2", "-c", "write -P 0x77 0 8k", "-c", "write -z 2044k 8k", p("top.qcow2")]);
    const base = await qcow2Driver.open(await openHostFile(p("wide.qcow2"), { readOnly: true }), {
      readOnly: true,
    });
    const top = await qcow2Driver.open(await openHostFile(p("top.qcow2"), { readOnly: true }), {
      readOnly: true,
      backing: base,
    });
    try {
      await writePieces(exportQcow2(top, {}), p("flat.qcow2"));
      await writePieces(exportRaw(top, {}), p("flat.raw"));
    } finally {
      await top.close();
      await base.close();
    }
    for (const [path, format] of [
      [p("flat.qcow2"), "qcow2"],
      [p("flat.raw"), "raw"],
    ] as const) {
      const compare = run("qemu-img", ["compare", "-F", format, p("top.qcow2"), path]);
      expect(compare.code, compare.stdout + compare.stderr).toBe(0);
    }
    expect(ok("qemu-img", ["info", "--output=json", p("flat.qcow2")])).not.toContain("backing");
  });
});
