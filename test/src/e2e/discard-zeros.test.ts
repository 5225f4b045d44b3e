import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type CreateVolumeSpec, createVdiskClient, type VdiskClient } from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/**
 * Regression (found by the kill -9 crash loop, seed 2 qcow2-v3-lazy): Discard promises that the range reads
 * as zeros afterwards, never as old or backing data — but qcow2 discards whole clusters only, so the partial
 * clusters at both ends of an unaligned range kept their data, and a v2 overlay discarded nothing at all.
 */
const KiB = 1024;
const SIZE = 1024 * KiB;
// Unaligned on every cluster size used here (512 B is the only one it is aligned to).
const START = 4 * KiB + 512;
const END = 200 * KiB + 1536;

let pool: string;
let server: RunningServer;
let client: VdiskClient;

beforeAll(async () => {
  pool = await mkdtemp(join(tmpdir(), "vdisk-discard-"));
  server = await startServer({
    config: { listen: "127.0.0.1:0", pool, maxCapacity: 2 ** 40, reflection: false, maxJobs: 2 },
    log: createLogger("silent", { pretty: false }),
  });
  client = createVdiskClient({ baseUrl: `http://127.0.0.1:${server.port}`, timeoutMs: 30_000 });
}, 60_000);

afterAll(async () => {
  client?.close();
  await server?.close();
  await rm(pool, { recursive: true, force: true });
});

async function readAll(name: string): Promise<Uint8Array> {
  const out = new Uint8Array(SIZE);
  for await (const piece of client.readVolume(name, { sparse: true }))
    if ("data" in piece) out.set(piece.data, piece.offset);
  return out;
}

const cases: {
  name: string;
  spec: Omit<CreateVolumeSpec, "name" | "capacityBytes">;
  base?: CreateVolumeSpec["qcow2"];
}[] = [
  { name: "raw", spec: { format: "raw" } },
  { name: "qcow2-v3", spec: { format: "qcow2", clusterSize: 64 * KiB } },
  { name: "qcow2-v2", spec: { format: "qcow2", clusterSize: 4 * KiB, qcow2: { compat: "v2" } } },
  { name: "qcow2-v3-overlay", spec: { format: "qcow2", clusterSize: 4 * KiB }, base: { compat: "v3" } },
  {
    name: "qcow2-v2-overlay",
    spec: { format: "qcow2", clusterSize: 4 * KiB, qcow2: { compat: "v2" } },
    base: { compat: "v2" },
  },
];

describe("Discard of an unaligned range reads as zeros over exactly that range", () => {
  for (const c of cases) {
    it(c.name, async () => {
      let backingVolume: string | undefined;
      if (c.base) {
        backingVolume = `${c.name}-base`;
        await client.createVolume({
          name: backingVolume,
          format: "qcow2",
          capacityBytes: SIZE,
          qcow2: c.base,
        }).result;
        await client.writeVolume(backingVolume, [{ offset: 0, data: new Uint8Array(SIZE).fill(0xcd) }]);
      }
      await client.createVolume({
        name: c.name,
        capacityBytes: SIZE,
        ...c.spec,
        ...(backingVolume ? { backingVolume } : {}),
      }).result;
      await client.writeVolume(c.name, [{ offset: 0, data: new Uint8Array(256 * KiB).fill(0xab) }]);
      const before = await readAll(c.name);

      await client.discard(c.name, START, END - START);
      await client.writeVolume(c.name, [{ flush: true }]);

      const after = await readAll(c.name);
      const expected = before.slice();
      expected.fill(0, START, END);
      const firstDifference = after.findIndex((b, i) => b !== expected[i]);
      expect(firstDifference).toBe(-1);
    });
  }
});
