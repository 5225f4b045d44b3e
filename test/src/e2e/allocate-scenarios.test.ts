import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { createVdiskClient, TiB, type VdiskClient } from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/**
 * Issue 4's AllocateRange / FlattenVolume scenarios on a 9-cluster qcow2 (64 KiB clusters), through a real
 * server and the SDK. A layer is written as a string of clusters: `X`/`Y`/`Z` distinct data, `0` a cluster
 * allocated in the top layer that reads zero, `_` a cluster the top layer does not hold. Every check compares
 * both the content read back and the allocation map, cluster by cluster.
 */
const CLUSTER = 64 * 1024;
const CLUSTERS = 9;
const FILL: Record<string, number> = { X: 0x58, Y: 0x59, Z: 0x5a };

let poolDir: string;
let server: RunningServer;
let client: VdiskClient;
let counter = 0;

beforeAll(async () => {
  await mkdir("/tmp/jobs", { recursive: true });
  poolDir = await mkdtemp("/tmp/jobs/e2e-alloc-");
  server = await startServer({
    config: { listen: "127.0.0.1:0", pool: poolDir, maxCapacity: TiB, reflection: false, maxJobs: 2 },
    log: createLogger("silent", { pretty: false }),
  });
  client = createVdiskClient({ baseUrl: `http://127.0.0.1:${server.port}`, timeoutMs: 20_000 });
});

afterAll(async () => {
  client?.close();
  await server?.close();
  if (poolDir) await rm(poolDir, { recursive: true, force: true });
});

function clusters(layout: string): string[] {
  const cells = layout.split(" ");
  expect(cells).toHaveLength(CLUSTERS);
  return cells;
}

/** Creates a qcow2 layer (over `backing`, if given) and writes the data clusters of `layout`. */
async function layer(layout: string, backing?: string): Promise<string> {
  const name = `v${++counter}`;
  await client.createVolume({
    name,
    format: "qcow2",
    capacityBytes: CLUSTERS * CLUSTER,
    clusterSize: CLUSTER,
    ...(backing === undefined ? {} : { backingVolume: backing }),
  }).result;
  const pieces = clusters(layout).flatMap((cell, i) =>
    cell in FILL ? [{ offset: i * CLUSTER, data: new Uint8Array(CLUSTER).fill(FILL[cell] as number) }] : [],
  );
  if (pieces.length > 0) await client.writeVolume(name, [...pieces, { flush: true }]);
  return name;
}

async function readAll(name: string): Promise<Uint8Array> {
  const bytes = new Uint8Array(CLUSTERS * CLUSTER);
  for await (const piece of client.readVolume(name, { sparse: false })) {
    if ("data" in piece) bytes.set(piece.data, piece.offset);
  }
  return bytes;
}

/**
 * Checks the top layer against `layout`. `below` gives what a `_` cluster reads as (the chain under it);
 * by default nothing, so zeros.
 */
async function expectLayer(name: string, layout: string, below = "_ _ _ _ _ _ _ _ _"): Promise<void> {
  const expected = clusters(layout);
  const fallback = clusters(below);
  const bytes = await readAll(name);
  const { extents } = await client.getAllocationMap(name).collect();
  const seen: string[] = [];
  const read: string[] = [];
  for (let i = 0; i < CLUSTERS; i++) {
    const at = i * CLUSTER;
    const extent = extents.find((e) => e.offset <= at && at + CLUSTER <= e.offset + e.length);
    if (extent === undefined) throw new Error(`no single extent covers cluster ${i}: ${JSON.stringify(extents)}`);
    const own = extent.present && extent.depth === 0;
    const cell = bytes.subarray(at, at + CLUSTER);
    const letter = Object.keys(FILL).find((k) => cell.every((b) => b === FILL[k])) ?? (cell.every((b) => b === 0) ? "0" : "?");
    if (!own) seen.push("_");
    else if (extent.zero && !extent.data) seen.push("0");
    else seen.push(extent.data ? letter : "?");
    read.push(letter);
  }
  const expectedRead = expected.map((c, i) => (c === "_" ? (fallback[i] === "_" ? "0" : fallback[i]) : c));
  expect({ map: seen.join(" "), content: read.join(" ") }).toEqual({
    map: expected.join(" "),
    content: expectedRead.join(" "),
  });
}

const HALF = 5 * CLUSTER;

describe("AllocateRange and FlattenVolume scenarios (9 × 64 KiB qcow2)", () => {
  it("new thin disk, no backing: FULL allocates zeros everywhere; half allocates the first five", async () => {
    const full = await layer("_ _ _ _ _ _ _ _ _");
    const summary = await client.allocateRange(full, { mode: "full" }).result;
    expect(summary.summary.zeroedBytes).toBe(CLUSTERS * CLUSTER);
    await expectLayer(full, "0 0 0 0 0 0 0 0 0");

    const half = await layer("_ _ _ _ _ _ _ _ _");
    await client.allocateRange(half, { mode: "full", offset: 0, length: HALF }).result;
    await expectLayer(half, "0 0 0 0 0 _ _ _ _");
  });

  it("existing X _ X X _ _ X _ X, no backing: FULL fills the holes with zeros; half only the first five", async () => {
    const full = await layer("X _ X X _ _ X _ X");
    await client.allocateRange(full, { mode: "full" }).result;
    await expectLayer(full, "X 0 X X 0 0 X 0 X");

    const half = await layer("X _ X X _ _ X _ X");
    await client.allocateRange(half, { mode: "full", length: HALF }).result;
    await expectLayer(half, "X 0 X X 0 _ X _ X");
  });

  it("new empty overlay: COPY_UP copies the base's data only, and flattening changes nothing", async () => {
    const base = await layer("X _ X X _ _ X _ X");
    const top = await layer("_ _ _ _ _ _ _ _ _", base);
    await client.allocateRange(top, { mode: "copy-up" }).result;
    await expectLayer(top, "X _ X X _ _ X _ X");
    await client.flattenVolume(top).result;
    const volume = await client.getVolume(top);
    expect(volume).toMatchObject({ backingVolume: undefined, chainDepth: 0 });
    await expectLayer(top, "X _ X X _ _ X _ X");
  });

  it("overlay Y Y Y over X _ X X _ _ X _ X: COPY_UP then FULL", async () => {
    const base = await layer("X _ X X _ _ X _ X");
    const top = await layer("Y Y Y _ _ _ _ _ _", base);
    await client.allocateRange(top, { mode: "copy-up" }).result;
    await expectLayer(top, "Y Y Y X _ _ X _ X");
    await client.allocateRange(top, { mode: "full" }).result;
    await expectLayer(top, "Y Y Y X 0 0 X 0 X");
  });

  it("three layers: FULL over the whole chain; COPY_UP above the bottom, then flatten onto the bottom", async () => {
    const chain = async () => {
      const bottom = await layer("_ _ Z Z _ _ _ Z _");
      const middle = await layer("X _ X _ _ _ X _ X", bottom);
      const top = await layer("Y Y _ Y _ _ _ _ _", middle);
      return { bottom, middle, top };
    };
    const a = await chain();
    await client.allocateRange(a.top, { mode: "full" }).result;
    await expectLayer(a.top, "Y Y X Y 0 0 X Z X");

    const b = await chain();
    await client.allocateRange(b.top, { mode: "copy-up", baseVolume: b.bottom }).result;
    const bottomContent = "_ _ Z Z _ _ _ Z _";
    await expectLayer(b.top, "Y Y X Y _ _ X _ X", bottomContent);
    await client.flattenVolume(b.top, { baseVolume: b.bottom }).result;
    expect(await client.getVolume(b.top)).toMatchObject({ backingVolume: b.bottom, chainDepth: 1 });
    await expectLayer(b.top, "Y Y X Y _ _ X _ X", bottomContent);
  });
});
