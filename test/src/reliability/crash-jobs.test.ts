import { type ChildProcess, execFile } from "node:child_process";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { MiB, type VdiskClient } from "@vdisk/sdk";
import { afterEach, describe, expect, it } from "vitest";
import { crash, spawnServer as spawnShared } from "./server-process.js";

/**
 * Issue 4: kill -9 the server during a FULL clone and during a flatten, restart it on the same pool:
 * every job is FAILED or finished, no temp file remains, every READY volume passes `qemu-img check`,
 * and the flattened overlay still reads exactly what it read before.
 */
const run = promisify(execFile);
const children: ChildProcess[] = [];
const pools: string[] = [];

afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  for (const p of pools.splice(0)) await rm(p, { recursive: true, force: true });
});

function spawnServer(pool: string): Promise<{ child: ChildProcess; client: VdiskClient }> {
  return spawnShared(pool, { track: (child) => children.push(child) });
}

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i += 512) bytes.fill(((i / 512 + seed) % 250) + 1, i, i + 512);
  return bytes;
}

async function fillVolume(client: VdiskClient, name: string, mib: number, seed: number): Promise<void> {
  const pieces = Array.from({ length: mib }, (_, i) => ({
    offset: i * 2 * MiB,
    data: pattern(MiB, seed + i),
  }));
  await client.writeVolume(name, [...pieces, { flush: true }]);
}

async function readAll(client: VdiskClient, name: string, size: number): Promise<Buffer> {
  const out = Buffer.alloc(size);
  for await (const piece of client.readVolume(name, { sparse: true }))
    if ("data" in piece) out.set(piece.data, piece.offset);
  return out;
}

/** Follows a job handle until work has started, then kills the server under it. Returns the job id. */
async function killMidJob(
  child: ChildProcess,
  handle: AsyncIterable<{ doneBytes: number; state: string }> & { jobId: Promise<string> },
) {
  const id = await handle.jobId;
  let seen = { doneBytes: 0, state: "queued" };
  try {
    for await (const p of handle) {
      seen = p;
      if (p.doneBytes > 0 || ["succeeded", "failed", "cancelled"].includes(p.state)) break;
    }
  } catch {
    // the job may end (or the stream break) first; either way the kill below is what the test is about
  }
  await crash(child);
  return { id, seen };
}

async function expectCleanPool(pool: string, client: VdiskClient): Promise<void> {
  expect(await readdir(join(pool, ".vdisk", "tmp"))).toEqual([]);
  for await (const volume of client.listVolumes()) {
    expect(volume.state).toBe("ready");
    if (volume.format === "raw") continue;
    await run("qemu-img", [
      "check",
      "-U",
      "-f",
      volume.format,
      join(pool, `${volume.name}.${volume.format}`),
    ]);
  }
}

describe("kill -9 during long jobs", () => {
  it("a FULL clone: the job is FAILED or finished, no temp file, READY volumes pass qemu-img check", async () => {
    const pool = await mkdtemp(join(tmpdir(), "vdisk-crash-clone-"));
    pools.push(pool);
    const first = await spawnServer(pool);
    await first.client.createVolume({ name: "src", format: "raw", capacityBytes: 1024 * MiB }).result;
    await fillVolume(first.client, "src", 192, 1);
    const { id: jobId, seen } = await killMidJob(
      first.child,
      first.client.cloneVolume("src", "copy", { format: "qcow2" }) as never,
    );
    // The kill landed while the copy was under way (not before it started, not after it ended).
    expect(seen).toMatchObject({ state: "running" });
    expect(seen.doneBytes).toBeGreaterThan(0);
    first.client.close();

    const second = await spawnServer(pool);
    try {
      const job = await second.client.getJob(jobId);
      expect(["failed", "succeeded"]).toContain(job.state);
      const copy = await second.client.getVolume("copy").catch(() => undefined);
      if (job.state === "failed") expect(copy).toBeUndefined();
      await expectCleanPool(pool, second.client);
    } finally {
      second.client.close();
    }
  }, 180_000);

  it("a flatten: the job is FAILED or finished, the overlay reads as before and passes qemu-img check", async () => {
    const pool = await mkdtemp(join(tmpdir(), "vdisk-crash-flatten-"));
    pools.push(pool);
    const size = 512 * MiB;
    const first = await spawnServer(pool);
    await first.client.createVolume({ name: "base", format: "qcow2", capacityBytes: size }).result;
    await fillVolume(first.client, "base", 128, 7);
    await first.client.createVolume({
      name: "top",
      format: "qcow2",
      capacityBytes: size,
      backingVolume: "base",
    }).result;
    await first.client.writeVolume("top", [{ offset: 3 * MiB, data: pattern(MiB, 99) }, { flush: true }]);
    const before = await readAll(first.client, "top", size);
    const { id: jobId, seen } = await killMidJob(first.child, first.client.flattenVolume("top") as never);
    expect(seen).toMatchObject({ state: "running" });
    expect(seen.doneBytes).toBeGreaterThan(0);
    first.client.close();

    const second = await spawnServer(pool);
    try {
      const job = await second.client.getJob(jobId);
      expect(["failed", "succeeded"]).toContain(job.state);
      const top = await second.client.getVolume("top");
      expect(top.state).toBe("ready");
      // Flatten drops the backing link only after the copy-up; either way the content is unchanged.
      expect(top.backingVolume ?? "").toBe(job.state === "succeeded" ? "" : "base");
      expect((await readAll(second.client, "top", size)).equals(before)).toBe(true);
      await expectCleanPool(pool, second.client);
    } finally {
      second.client.close();
    }
  }, 180_000);
});
