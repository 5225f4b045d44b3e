import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { createVdiskClient, GiB, MiB, type VdiskClient } from "@vdisk/sdk";
import { afterAll, describe, expect, it } from "vitest";
import {
  readCpuSeconds,
  readMemory,
  type ServerProcess,
  sampleMemory,
  spawnServer,
} from "./server-process.js";
import { percentile, slope } from "./stats.js";
import {
  probeGetVolume,
  runWorkload,
  type SlowReaderResult,
  type StreamKind,
  slowReader,
} from "./workload.js";

/**
 * Issue 7: 200 concurrent streams mixing reads, writes, allocation maps (and a few check jobs) for 60 s
 * against a real server process. Every error must be a documented admission rejection; the server's RSS
 * must stay under a budget and stop growing, even with slow readers that leave their streams almost
 * unread; GetVolume latency is measured and reported (not asserted: CI machines are noisy).
 *
 *   VDISK_LOAD_SECONDS  run length (default 60)
 *   VDISK_LOAD_STREAMS  concurrent streams (default 200)
 *   VDISK_LOAD_REPORT   where to write the JSON report (default: the test's scratch dir, kept after the run)
 */
const run = promisify(execFile);

const seconds = Number(process.env.VDISK_LOAD_SECONDS ?? 60);
const totalStreams = Number(process.env.VDISK_LOAD_STREAMS ?? 200);

/**
 * Server memory budget. Measured: ~150 MiB at rest, ~280–360 MiB peak under this load on the 2-core VM; a
 * server that buffered what the slow readers leave unread would pass it within seconds (each of them could
 * pull its 4 GiB volume into memory).
 */
const PEAK_RSS_BUDGET = 768 * MiB;
/** Allowed RSS growth over the second half of the run (least-squares trend, GC sawtooth averages out). */
const SECOND_HALF_GROWTH_BUDGET = 64 * MiB;
const VOLUME_BYTES = 256 * MiB;
const DATA_REGION_BYTES = 64 * MiB;
const SLOW_VOLUME_BYTES = 4 * GiB;
const SLOW_READERS = 4;
const CHECK_STREAMS = 4;
/**
 * Bulk uploads (WriteVolume) and bulk downloads (ReadVolume) never share a connection. With the large HTTP/2
 * windows both sides use (server 8/32 MiB, SDK 4/32 MiB), one connection carrying bulk data both ways can fill
 * both sockets' send buffers, and Node's http2 stops reading a socket while one of its own writes is pending
 * (its CVE-2019-9511/9517 mitigation): most likely why the first runs of this test hung 3 of 4 mixed
 * connections for good within seconds, while separate connections never hung (docs/operations.md "Load").
 */
const UPLOAD_CONNECTIONS = 2;
const DOWNLOAD_CONNECTIONS = 3;
const PROBE_INTERVAL_MS = 25;
const MEMORY_SAMPLE_MS = 250;

/** The stream mix: a few slow readers and check jobs, the rest 40 % reads, 30 % writes, 30 % maps. */
function streamMix(total: number): Record<StreamKind, number> & { slow: number } {
  const regular = total - SLOW_READERS - CHECK_STREAMS;
  if (!Number.isInteger(regular) || regular < 10) throw new Error(`VDISK_LOAD_STREAMS must be at least 18`);
  const read = Math.round(regular * 0.4);
  const write = Math.round(regular * 0.3);
  return { read, write, map: regular - read - write, check: CHECK_STREAMS, slow: SLOW_READERS };
}

const scratch = await mkdtemp(join(tmpdir(), "vdisk-load-"));
const pool = join(scratch, "pool");
const reportPath = process.env.VDISK_LOAD_REPORT ?? join(scratch, "load-report.json");
let server: ServerProcess | undefined;
const clients: VdiskClient[] = [];

afterAll(async () => {
  for (const c of clients.splice(0)) c.close();
  await server?.stop();
  // The report outlives the run; the pool (up to a GiB of volumes) does not.
  await rm(pool, { recursive: true, force: true });
});

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i += 4096) bytes.fill(((i / 4096 + seed) % 250) + 1, i, i + 4096);
  return bytes;
}

/** Volumes with 1 MiB of data every 8 MiB of their first 64 MiB, so maps and reads meet data and holes. */
async function createVolumes(client: VdiskClient): Promise<string[]> {
  const names: string[] = [];
  for (let i = 0; i < 14; i++) {
    const format = i % 2 === 0 ? "raw" : "qcow2";
    const name = `load-${format}-${i}`;
    await client.createVolume({ name, format, capacityBytes: VOLUME_BYTES }).result;
    const pieces = Array.from({ length: 8 }, (_, k) => ({
      offset: k * 8 * MiB,
      data: pattern(MiB, i + k),
    }));
    await client.writeVolume(name, pieces);
    names.push(name);
  }
  return names;
}

/** The server's per-volume stream admission limit (server/src/services/context.ts MAX_STREAMS_PER_VOLUME). */
const STREAMS_PER_VOLUME = 16;

/**
 * Holds the per-volume limit of reads open at once on every volume: each reads more than its HTTP/2 stream
 * window lets the server send, so none can finish before all are open. They are spread over several
 * connections because a paused stream keeps its bytes counted against the connection's window too.
 * Returns the volumes that still refuse some of them after a few seconds (server handlers finish
 * asynchronously after a client cancel).
 */
async function admissionAfterLoad(
  clients: readonly VdiskClient[],
  volumes: readonly string[],
): Promise<string[]> {
  const refusing: string[] = [];
  for (const volume of volumes) {
    let ok = false;
    for (let attempt = 0; attempt < 20 && !ok; attempt++) {
      if (attempt > 0) await sleep(250);
      const cancel = new AbortController();
      const streams = Array.from({ length: STREAMS_PER_VOLUME }, (_, i) =>
        (clients[i % clients.length] as VdiskClient)
          .readVolume(volume, {
            length: 16 * MiB,
            chunkSize: 64 * 1024,
            sparse: false,
            signal: cancel.signal,
          })
          [Symbol.asyncIterator](),
      );
      const first = await Promise.race([
        Promise.allSettled(streams.map((s) => s.next())),
        sleep(10_000, [{ status: "rejected" as const, reason: "no first message within 10 s" }]),
      ]);
      cancel.abort();
      ok = first.every((r) => r.status === "fulfilled");
    }
    if (!ok) refusing.push(volume);
  }
  return refusing;
}

const mib = (bytes: number) => Math.round((bytes / MiB) * 10) / 10;
const ms = (value: number) => Math.round(value * 100) / 100;

describe("load", () => {
  it(
    `${totalStreams} concurrent streams for ${seconds} s: only admission rejections, bounded server RSS`,
    async () => {
      const mix = streamMix(totalStreams);
      await mkdir(pool);
      // Logs stay at info (the port is read from the "listening" line); per-call failures log at debug.
      server = await spawnServer(pool);
      const baseUrl = `http://127.0.0.1:${server.port}`;
      const connect = () => {
        const c = createVdiskClient({ baseUrl, timeoutMs: 30_000 });
        clients.push(c);
        return c;
      };
      const setup = connect();
      const volumes = await createVolumes(setup);
      await setup.createVolume({ name: "load-slow", format: "raw", capacityBytes: SLOW_VOLUME_BYTES }).result;
      const pid = server.child.pid as number;
      const baseline = await readMemory(pid);
      const cpuBefore = await readCpuSeconds(pid);

      // Uploads and downloads on separate connections: see UPLOAD_CONNECTIONS.
      const uploadClients = Array.from({ length: UPLOAD_CONNECTIONS }, connect);
      const downloadClients = Array.from({ length: DOWNLOAD_CONNECTIONS }, connect);
      const probeClient = connect();
      const slowClient = connect();
      const stopSide = new AbortController();
      const memory = sampleMemory(pid, MEMORY_SAMPLE_MS);
      const started = performance.now();
      const slow = Array.from({ length: mix.slow }, () =>
        slowReader(slowClient, "load-slow", stopSide.signal),
      );
      const probe = probeGetVolume(probeClient, volumes, PROBE_INTERVAL_MS, stopSide.signal);
      const work = await runWorkload({
        volumes,
        dataRegionBytes: DATA_REGION_BYTES,
        streams: { read: mix.read, write: mix.write, map: mix.map, check: mix.check },
        clients: {
          write: uploadClients,
          read: downloadClients,
          map: downloadClients,
          check: downloadClients,
        },
        durationMs: seconds * 1000,
      });
      stopSide.abort();
      const slowResults: SlowReaderResult[] = await Promise.all(slow);
      const { latenciesMs, timedOut, errors: probeErrors } = await probe;
      const elapsed = (performance.now() - started) / 1000;
      const samples = await memory.stop();
      const after = await readMemory(pid);
      const serverCpuSeconds = (await readCpuSeconds(pid)) - cpuBefore;

      // Every cancelled or finished call gave its admission slot back: each volume admits its full quota again.
      const leakedSlots = await admissionAfterLoad(downloadClients, volumes);

      const half = elapsed / 2;
      const secondHalf = samples.filter((s) => s.t >= half).map((s) => ({ x: s.t, y: s.rssBytes }));
      const growth = slope(secondHalf) * (elapsed - half);
      const peak = Math.max(after.hwmBytes, ...samples.map((s) => s.hwmBytes));
      const unexpected = [
        ...work.unexpected,
        ...probeErrors,
        ...slowResults.flatMap((r) => (r.error === undefined ? [] : [r.error])),
      ];
      const report = {
        seconds: Math.round(elapsed * 10) / 10,
        streams: {
          ...mix,
          total: totalStreams,
          uploadConnections: UPLOAD_CONNECTIONS,
          downloadConnections: DOWNLOAD_CONNECTIONS,
        },
        ops: { ...work.ops.toJSON(), getVolume: latenciesMs.length },
        opsPerSecond: Object.fromEntries(
          Object.entries(work.ops.toJSON()).map(([k, n]) => [k, Math.round((n / elapsed) * 10) / 10]),
        ),
        bytesMiB: {
          read: mib(work.bytes.get("read")),
          written: mib(work.bytes.get("write")),
          slowRead: mib(slowResults.reduce((s, r) => s + r.bytes, 0)),
        },
        rejections: work.rejections.toJSON(),
        cancelledAtEnd: work.cancelledAtEnd.toJSON(),
        unexpectedErrors: unexpected,
        stuckStreams: work.stuck.toJSON(),
        getVolumeLatencyMs: {
          count: latenciesMs.length,
          timedOut,
          p50: ms(percentile(latenciesMs, 50)),
          p95: ms(percentile(latenciesMs, 95)),
          p99: ms(percentile(latenciesMs, 99)),
          max: ms(Math.max(...latenciesMs)),
        },
        // Share of one core the server got during the run: on a shared VM, latency follows from it.
        serverCpu: {
          seconds: Math.round(serverCpuSeconds * 10) / 10,
          coresUsed: Math.round((serverCpuSeconds / elapsed) * 100) / 100,
        },
        serverMemoryMiB: {
          baselineRss: mib(baseline.rssBytes),
          peakRss: mib(peak),
          endRss: mib(after.rssBytes),
          secondHalfTrend: mib(growth),
          budgetPeak: mib(PEAK_RSS_BUDGET),
          budgetSecondHalfTrend: mib(SECOND_HALF_GROWTH_BUDGET),
          samples: samples.length,
        },
      };
      await writeFile(reportPath, `${JSON.stringify(report, null, 2)}\n`);
      const rejections =
        Object.entries(report.rejections)
          .map(([k, n]) => `${k}=${n}`)
          .join(" ") || "none";
      console.log(
        `load: ${report.seconds}s ${totalStreams} streams | ops ${Object.entries(report.ops)
          .map(([k, n]) => `${k}=${n}`)
          .join(
            " ",
          )} | MiB read=${report.bytesMiB.read} written=${report.bytesMiB.written} slow=${report.bytesMiB.slowRead}` +
          ` | rejections ${rejections} | unexpected ${unexpected.length} | GetVolume p50/p95/p99 ` +
          `${report.getVolumeLatencyMs.p50}/${report.getVolumeLatencyMs.p95}/${report.getVolumeLatencyMs.p99} ms (${timedOut} timed out)` +
          ` | server CPU ${report.serverCpu.coresUsed} cores | server RSS base ${report.serverMemoryMiB.baselineRss} peak ${report.serverMemoryMiB.peakRss}` +
          ` MiB, 2nd-half trend ${report.serverMemoryMiB.secondHalfTrend} MiB | report ${reportPath}`,
      );

      expect(unexpected).toEqual([]);
      expect(work.stuck.toJSON()).toEqual({});
      expect(leakedSlots).toEqual([]);
      for (const kind of ["read", "write", "map"] as const) expect(work.ops.get(kind)).toBeGreaterThan(0);
      expect(latenciesMs.length).toBeGreaterThan(0);
      // The slow readers were served (a little), and were never allowed to pull the volume into memory.
      for (const r of slowResults) expect(r.pieces).toBeGreaterThan(0);
      expect(peak).toBeLessThan(PEAK_RSS_BUDGET);
      expect(growth).toBeLessThan(SECOND_HALF_GROWTH_BUDGET);

      // Under load nothing was corrupted: every qcow2 volume passes qemu-img check once the server is gone.
      expect(await server.stop()).toBe(0);
      for (const name of volumes.filter((v) => v.includes("qcow2")))
        await run("qemu-img", ["check", "-f", "qcow2", join(pool, `${name}.qcow2`)]);
    },
    (seconds + 150) * 1000,
  );
});
