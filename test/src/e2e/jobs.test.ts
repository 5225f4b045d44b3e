import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { createVdiskClient, GiB, type JobSnapshot, TiB, type VdiskClient } from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/**
 * Issue 4 acceptance for jobs, through a real server and the SDK: a long CreateVolume streams progress, is
 * visible to a second client, is idempotent by request_id and cancels without leaving anything behind;
 * CloneVolume FULL converts between formats keeping content (qemu-img compare) and sparseness; GetVolume's
 * byte counts match the file and the map; CheckVolume reports a clean qcow2 as qemu exit code 0.
 * qemu-img is required; without it the clone tests fail.
 */
const run = promisify(execFile);
const MiB = 1024 * 1024;

let poolDir: string;
let server: RunningServer;
let client: VdiskClient;
let watcher: VdiskClient;

beforeAll(async () => {
  await mkdir("/tmp/jobs", { recursive: true });
  poolDir = await mkdtemp("/tmp/jobs/e2e-jobs-");
  server = await startServer({
    config: { listen: "127.0.0.1:0", pool: poolDir, maxCapacity: TiB, reflection: false, maxJobs: 2 },
    log: createLogger("silent", { pretty: false }),
  });
  const baseUrl = `http://127.0.0.1:${server.port}`;
  client = createVdiskClient({ baseUrl, timeoutMs: 60_000 });
  watcher = createVdiskClient({ baseUrl, timeoutMs: 60_000 });
});

afterAll(async () => {
  client?.close();
  watcher?.close();
  await server?.close();
  if (poolDir) await rm(poolDir, { recursive: true, force: true });
});

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = ((i * 31 + seed) % 251) || 1;
  return bytes;
}

describe("jobs end to end", () => {
  it("a 4 GiB fully preallocated qcow2: progress, a second watcher, idempotent request_id, cancel leaves nothing", async () => {
    const spec = { name: "big", format: "qcow2" as const, capacityBytes: 4 * GiB, preallocation: "full" as const };
    const requestId = "create-big-1";
    const handle = client.createVolume(spec, { requestId });
    handle.result.catch(() => {});
    const jobId = await handle.jobId;

    const again = client.createVolume(spec, { requestId });
    again.result.catch(() => {});
    expect(await again.jobId).toBe(jobId);

    const watched = watcher.watchJob(jobId);
    watched.result.catch(() => {});
    const watchedStates: JobSnapshot[] = [];
    const watching = (async () => {
      for await (const s of watched) watchedStates.push(s);
    })();

    const snapshots: JobSnapshot[] = [];
    let cancelled = false;
    for await (const s of handle) {
      snapshots.push(s);
      const running = s.state === "running" && s.totalBytes > 0;
      if (!cancelled && running && s.doneBytes >= s.totalBytes / 2 && snapshots.length >= 10) {
        cancelled = true;
        await watcher.cancelJob(jobId);
      }
    }
    await watching;
    await again.result.catch(() => {});

    expect(cancelled).toBe(true);
    expect(snapshots.length).toBeGreaterThanOrEqual(10);
    const done = snapshots.map((s) => s.doneBytes);
    expect(done).toEqual([...done].sort((a, b) => a - b));
    expect(snapshots.at(-1)?.state).toBe("cancelled");
    expect(watchedStates.every((s) => s.jobId === jobId)).toBe(true);
    expect(watchedStates.at(-1)?.state).toBe("cancelled");
    await expect(handle.result).rejects.toThrow(/cancel/i);
    await expect(client.getVolume("big")).rejects.toMatchObject({ reason: "VOLUME_NOT_FOUND" });
    expect((await readdir(poolDir)).filter((f) => f.includes("big"))).toEqual([]);
  }, 120_000);

  it("CloneVolume FULL raw→qcow2 and qcow2→raw: identical content, sparseness kept", async () => {
    await client.createVolume({ name: "src", format: "raw", capacityBytes: 64 * MiB }).result;
    await client.writeVolume("src", [
      { offset: 0, data: pattern(MiB, 3) },
      { offset: 40 * MiB, data: pattern(3 * MiB, 7) },
      { flush: true },
    ]);
    const asQcow2 = await client.cloneVolume("src", "src-q", { mode: "full", format: "qcow2" }).result;
    expect(asQcow2).toMatchObject({ format: "qcow2", capacityBytes: 64 * MiB });
    const back = await client.cloneVolume("src-q", "src-r", { mode: "full", format: "raw" }).result;
    expect(back).toMatchObject({ format: "raw", capacityBytes: 64 * MiB });

    const file = (name: string, format: string) => join(poolDir, `${name}.${format}`);
    await run("qemu-img", ["compare", "-f", "raw", "-F", "qcow2", file("src", "raw"), file("src-q", "qcow2")]);
    await run("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", file("src-q", "qcow2"), file("src-r", "raw")]);

    const dataRuns = async (name: string) =>
      (await client.getAllocationMap(name).collect()).extents
        .filter((e) => e.data)
        .map((e) => [e.offset, e.offset + e.length] as const);
    const sourceData = await dataRuns("src");
    const covered = (runs: readonly (readonly [number, number])[], at: number, end: number) =>
      runs.some(([s, e]) => s <= at && end <= e);
    for (const name of ["src-q", "src-r"]) {
      const runs = await dataRuns(name);
      expect(runs.length).toBeGreaterThan(0);
      for (const [s, e] of runs) expect(covered(sourceData, s, e), `${name} data at ${s}..${e}`).toBe(true);
    }
  }, 60_000);

  it("GetVolume's physical and allocation bytes match the file and the map", async () => {
    for (const name of ["src", "src-q", "src-r"]) {
      const volume = await client.getVolume(name);
      const st = await stat(join(poolDir, `${name}.${volume.format}`));
      expect(volume.physicalBytes).toBe(st.blocks * 512);
      const { extents } = await client.getAllocationMap(name).collect();
      // An allocated zero run keeps host space (a qcow2 zero cluster with a host offset); a raw hole is
      // mapped linearly too but holds nothing, so for raw only data counts.
      const allocatedZero = (e: (typeof extents)[number]) =>
        volume.format !== "raw" && e.zero && e.hostOffset !== undefined;
      const own = extents
        .filter((e) => e.present && e.depth === 0 && (e.data || allocatedZero(e)))
        .reduce((sum, e) => sum + e.length, 0);
      expect(volume.allocationBytes).toBe(own);
    }
  });

  it("CheckVolume on a clean qcow2 reports qemu exit code 0", async () => {
    const report = await client.checkVolume("src-q").result;
    expect(report).toMatchObject({ corruptions: 0, leaks: 0, qemuExitCode: 0 });
    const raw = await client.checkVolume("src").result;
    expect(raw).toMatchObject({ corruptions: 0, leaks: 0, qemuExitCode: 0 });
    const repaired = await client.checkVolume("src-q", { repair: "all" }).result;
    expect(repaired).toMatchObject({ corruptions: 0, leaks: 0, corruptionsFixed: 0, leaksFixed: 0, qemuExitCode: 0 });
    await client.createVolume({ name: "vm", format: "vmdk", capacityBytes: 16 * MiB }).result;
    await client.writeVolume("vm", [{ offset: MiB, data: pattern(MiB, 9) }, { flush: true }]);
    expect(await client.checkVolume("vm").result).toMatchObject({ corruptions: 0, leaks: 0, qemuExitCode: 0 });
  });

  it("ResizeVolume on qcow2: grows with the grown area preallocated, shrinks only with allow_shrink", async () => {
    await client.createVolume({ name: "rq", format: "qcow2", capacityBytes: 8 * MiB }).result;
    await client.writeVolume("rq", [{ offset: MiB, data: pattern(MiB, 5) }, { flush: true }]);
    const grown = await client.resizeVolume("rq", 16 * MiB, { preallocation: "full" }).result;
    expect(grown.capacityBytes).toBe(16 * MiB);
    const { extents } = await client.getAllocationMap("rq", { offset: 8 * MiB }).collect();
    expect(extents.every((e) => e.present && e.depth === 0 && e.hostOffset !== undefined)).toBe(true);
    await expect(client.resizeVolume("rq", 4 * MiB).result).rejects.toMatchObject({ reason: "SHRINK_NOT_ALLOWED" });
    const shrunk = await client.resizeVolume("rq", 4 * MiB, { allowShrink: true }).result;
    expect(shrunk.capacityBytes).toBe(4 * MiB);
    const bytes = new Uint8Array(MiB);
    for await (const piece of client.readVolume("rq", { offset: MiB, length: MiB, sparse: false }))
      if ("data" in piece) bytes.set(piece.data, piece.offset - MiB);
    expect(Buffer.from(bytes).equals(Buffer.from(pattern(MiB, 5)))).toBe(true);
    await run("qemu-img", ["check", "-f", "qcow2", join(poolDir, "rq.qcow2")]);
    const { stdout } = await run("qemu-img", ["info", "--output=json", join(poolDir, "rq.qcow2")]);
    expect((JSON.parse(stdout) as { "virtual-size": number })["virtual-size"]).toBe(4 * MiB);
  });

  it("a cancelled CloneVolume FULL leaves no file and no record", async () => {
    const size = 256 * MiB;
    await client.createVolume({ name: "fat", format: "raw", capacityBytes: size }).result;
    const chunk = pattern(4 * MiB, 11);
    const pieces = function* () {
      for (let at = 0; at < size; at += chunk.length) yield { offset: at, data: chunk };
      yield { flush: true as const };
    };
    await client.writeVolume("fat", pieces());
    const handle = client.cloneVolume("fat", "fat-copy", { mode: "full", format: "qcow2" });
    handle.result.catch(() => {});
    const jobId = await handle.jobId;
    await client.cancelJob(jobId);
    const states: JobSnapshot[] = [];
    for await (const s of handle) states.push(s);
    expect(states.at(-1)?.state).toBe("cancelled");
    await expect(client.getVolume("fat-copy")).rejects.toMatchObject({ reason: "VOLUME_NOT_FOUND" });
    expect((await readdir(poolDir)).filter((f) => f.includes("fat-copy"))).toEqual([]);
    await client.deleteVolume("fat");
  }, 60_000);
});
