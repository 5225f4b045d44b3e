import type { ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AllocateModeName, CreateVolumeSpec, VdiskClient } from "@vdisk/sdk";
import { crash, type ServerLaunch, type ServerProcess, spawnServer } from "../server-process.js";
import { VolumeOracle } from "./oracle.js";
import { Random } from "./random.js";
import { SECTOR, sectorsOf } from "./sectors.js";
import {
  CrashLoopViolation,
  qcow2DirtyOnDisk,
  qemuCheck,
  verifyCheckJob,
  verifyContent,
  verifyJobsTerminal,
  verifyPoolFiles,
  verifyVolumeRecord,
} from "./verify.js";
import { type LaneVolume, runLane, TokenSource } from "./workload.js";

export const CRASH_FORMATS = ["raw", "qcow2-v2", "qcow2-v3", "qcow2-v3-lazy"] as const;
export type CrashFormat = (typeof CRASH_FORMATS)[number];

export interface CrashLoopOptions {
  format: CrashFormat;
  seed: number;
  iterations: number;
  /** Where the pool and the oracle files go (a fresh temp directory by default); kept when a check fails. */
  workDir?: string;
  /** How the server is started (see server-process.ts); the loop defaults to the bundle for cheap restarts. */
  launch?: ServerLaunch;
  /** Random delay before the kill, after a random number (0–4) of operations have finished. */
  killAfterMs?: [number, number];
  /** Progress lines (one per iteration). */
  log?: (line: string) => void;
  /** Called with every server process, so a test can kill stragglers. */
  track?: (child: ChildProcess) => void;
}

export interface CrashLoopReport {
  format: CrashFormat;
  seed: number;
  kills: number;
  ops: number;
  jobs: number;
  /** Times a lazy-refcounts image was found dirty after the kill (and then had to be repaired on open). */
  dirtyReopens: number;
  /** Leaks qemu-img found after a kill (allowed), and repaired by CheckVolume. */
  leaks: number;
  /** Operations not yet acknowledged and flushed at a kill: their sectors could read old or new. */
  ambiguousOps: number;
  /** Mean milliseconds per phase. */
  ms: { restart: number; workload: number; verify: number; iteration: number };
  workDir: string;
}

const MiB = 1024 * 1024;
const MAX_CAPACITY = 4 * MiB;
const MIN_CAPACITY = 1 * MiB;
const START_CAPACITY = 2 * MiB;

interface VolumePlan {
  name: string;
  spec: CreateVolumeSpec;
}

function qcow2Options(format: CrashFormat): CreateVolumeSpec["qcow2"] {
  if (format === "qcow2-v2") return { compat: "v2" };
  return { compat: "v3", lazyRefcounts: format === "qcow2-v3-lazy" };
}

/**
 * Volumes of one format per server, so every kill lands on several at once. qcow2 gets three cluster
 * sizes (512 B: many L2 tables and refcount blocks; 4 KiB; 64 KiB) and an overlay over a base that is
 * written once, so allocate/flatten jobs have something to copy up.
 */
function plan(format: CrashFormat): { standalone: VolumePlan[]; base?: VolumePlan; overlay?: VolumePlan } {
  if (format === "raw") {
    return {
      standalone: ["a", "b", "c"].map((name) => ({
        name,
        spec: { name, format: "raw", capacityBytes: START_CAPACITY },
      })),
    };
  }
  const qcow2 = qcow2Options(format);
  const volume = (name: string, clusterSize: number, extra: Partial<CreateVolumeSpec> = {}): VolumePlan => ({
    name,
    spec: { name, format: "qcow2", capacityBytes: START_CAPACITY, clusterSize, qcow2, ...extra },
  });
  return {
    standalone: [volume("a", 65536), volume("b", 512)],
    base: volume("base", 65536),
    overlay: volume("top", 4096, { backingVolume: "base" }),
  };
}

function fileOf(name: string, format: CrashFormat): string {
  return `${name}.${format === "raw" ? "raw" : "qcow2"}`;
}

/**
 * The kill -9 loop (reliability.md T1): a seeded random workload against the real server, SIGKILL at a
 * random moment, restart on the same pool, then "nothing lost" (§c) checked against an on-disk oracle.
 * Throws a message naming format, seed and iteration at the first violation; the work directory (pool +
 * oracle files) is then kept for inspection.
 */
export async function runCrashLoop(options: CrashLoopOptions): Promise<CrashLoopReport> {
  const { format, seed } = options;
  const workDir = options.workDir ?? (await mkdtemp(join(tmpdir(), `vdisk-crash-loop-${format}-`)));
  const pool = join(workDir, "pool");
  const oracleDir = join(workDir, "oracle");
  await mkdir(pool, { recursive: true });
  await mkdir(oracleDir, { recursive: true });
  const random = new Random(seed);
  const tokens = new TokenSource(Math.imul(seed, 7919) >>> 8);
  const [minKill, maxKill] = options.killAfterMs ?? [0, 300];
  const launch = options.launch ?? "bundle";
  const start = (): Promise<ServerProcess> =>
    spawnServer(pool, {
      launch,
      args: ["--no-reflection"],
      // A killed server must fail the in-flight calls at once, not be retried against the next one.
      client: { retry: { maxAttempts: 1 }, reattach: { maxAttempts: 1 } },
      ...(options.track ? { track: options.track } : {}),
    });
  const report: CrashLoopReport = {
    format,
    seed,
    kills: 0,
    ops: 0,
    jobs: 0,
    dirtyReopens: 0,
    leaks: 0,
    ambiguousOps: 0,
    ms: { restart: 0, workload: 0, verify: 0, iteration: 0 },
    workDir,
  };
  const totals = { restart: 0, workload: 0, verify: 0, iteration: 0 };
  const layout = plan(format);
  const allocateModes: readonly AllocateModeName[] =
    format === "raw" ? ["full"] : ["copy-up", "full", "metadata"];
  const lanes: LaneVolume[] = [];
  let baseOracle: VolumeOracle | undefined;
  let tag = 0;
  let server = await start();
  let iteration = 0;
  try {
    const laneFor = (p: VolumePlan, overlay: boolean, from?: VolumeOracle): LaneVolume => ({
      // An overlay reads its base's sectors, so it shares the base's tag; tokens are unique per run, so
      // base and overlay writes still never pass for each other.
      oracle: VolumeOracle.inDirectory(
        oracleDir,
        p.name,
        from?.tag ?? ++tag,
        START_CAPACITY,
        MAX_CAPACITY,
        from?.tokens,
      ),
      allocateModes,
      overlay,
      minCapacity: MIN_CAPACITY,
    });
    for (const p of layout.standalone) {
      await server.client.createVolume(p.spec).result;
      lanes.push(laneFor(p, false));
    }
    if (layout.base && layout.overlay) {
      baseOracle = await createBase(server.client, layout.base, ++tag, oracleDir, random, tokens);
      await server.client.createVolume(layout.overlay.spec).result;
      lanes.push(laneFor(layout.overlay, true, baseOracle));
    }
    for (const lane of lanes) await lane.oracle.save();
    const expectedFiles = [...lanes.map((l) => l.oracle.name), ...(baseOracle ? [baseOracle.name] : [])].map(
      (n) => fileOf(n, format),
    );

    for (iteration = 1; iteration <= options.iterations; iteration++) {
      const began = Date.now();
      if (layout.overlay && baseOracle)
        await renewFlatOverlay(server.client, lanes, layout.overlay, baseOracle);

      // Workload on every volume at once, then SIGKILL at a random moment while it runs.
      // The kill waits for a random number of finished operations first (a fixed delay alone lands before
      // the first one on a busy machine), then for a random delay, so it falls anywhere in an operation.
      let stopped = false;
      const opsBeforeKill = random.int(0, 4);
      let completed = 0;
      let enough = () => {};
      const reached = new Promise<void>((resolve) => {
        enough = resolve;
      });
      if (opsBeforeKill === 0) enough();
      const onOp = () => {
        if (++completed >= opsBeforeKill) enough();
      };
      const running = lanes.map((lane) =>
        runLane(server.client, lane, random.fork(), tokens, () => stopped, onOp),
      );
      // A lane that fails before the kill ends the wait too; its error is reported below.
      await Promise.race([reached, Promise.all(running).catch(() => {})]);
      await new Promise((r) => setTimeout(r, random.int(minKill, maxKill)));
      stopped = true;
      await crash(server.child);
      report.kills++;
      for (const lane of lanes) lane.oracle.note(`--- kill ${iteration} ---`);
      server.client.close();
      const results = await Promise.allSettled(running);
      for (const r of results) {
        if (r.status === "rejected") throw r.reason;
        report.ops += r.value.ops;
        report.jobs += r.value.jobs.length;
      }
      for (const lane of lanes)
        if (lane.oracle.pending.length > 0) report.ambiguousOps += lane.oracle.pending.length;
      const worked = Date.now();

      const dirty = new Set<string>();
      if (format === "qcow2-v3-lazy") {
        for (const lane of lanes)
          if (await qcow2DirtyOnDisk(join(pool, fileOf(lane.oracle.name, format))))
            dirty.add(lane.oracle.name);
        report.dirtyReopens += dirty.size;
      }

      server = await start();
      const restarted = Date.now();
      await verifyAfterRestart(server.client, lanes, baseOracle, {
        pool,
        format,
        dirty,
        expectedFiles,
        report,
      });
      const verified = Date.now();

      totals.workload += worked - began;
      totals.restart += restarted - worked;
      totals.verify += verified - restarted;
      totals.iteration += verified - began;
      options.log?.(
        `${format} seed ${seed} iteration ${iteration}: ${results.reduce((n, r) => n + (r.status === "fulfilled" ? r.value.ops : 0), 0)} ops, ` +
          `restart ${restarted - worked} ms, verify ${verified - restarted} ms${dirty.size ? `, dirty: ${[...dirty].join(",")}` : ""}`,
      );
    }
  } catch (err) {
    const what = err instanceof CrashLoopViolation ? "nothing-lost violation" : "failure";
    throw new Error(
      `crash loop ${what}: format ${format}, seed ${seed}, iteration ${iteration} (work dir kept: ${workDir})\n` +
        `${err instanceof Error ? err.message : String(err)}\n--- server output ---\n${server.output().slice(-4000)}`,
      { cause: err },
    );
  } finally {
    server.client.close();
    if (server.child.exitCode === null && server.child.signalCode === null) await crash(server.child);
  }
  const n = Math.max(1, report.kills);
  report.ms = {
    restart: Math.round(totals.restart / n),
    workload: Math.round(totals.workload / n),
    verify: Math.round(totals.verify / n),
    iteration: Math.round(totals.iteration / n),
  };
  if (!options.workDir) await rm(workDir, { recursive: true, force: true });
  return report;
}

/** The base is written once (fully, durably) and never again: the overlay reads through to it. */
async function createBase(
  client: VdiskClient,
  p: VolumePlan,
  tag: number,
  oracleDir: string,
  random: Random,
  tokens: TokenSource,
): Promise<VolumeOracle> {
  await client.createVolume(p.spec).result;
  const oracle = VolumeOracle.inDirectory(oracleDir, p.name, tag, START_CAPACITY, START_CAPACITY);
  const pieces = [];
  // Data in most places, holes in some: the overlay sees both through the chain.
  for (let first = 0; first < oracle.sectors; ) {
    const count = Math.min(oracle.sectors - first, random.int(1, 512));
    if (random.chance(0.75)) {
      const token = tokens.next();
      oracle.tokens.fill(token, first, first + count);
      pieces.push({ offset: first * SECTOR, data: sectorsOf(token, first, count, tag) });
    }
    first += count;
  }
  await client.writeVolume(p.name, pieces);
  await oracle.save();
  return oracle;
}

/** After an iteration flattened the overlay, a fresh one takes its place, so flatten keeps having work. */
async function renewFlatOverlay(
  client: VdiskClient,
  lanes: LaneVolume[],
  p: VolumePlan,
  base: VolumeOracle,
): Promise<void> {
  const volume = await client.getVolume(p.name);
  if (volume.backingVolume !== undefined) return;
  await client.deleteVolume(p.name);
  await client.createVolume(p.spec).result;
  const lane = lanes.find((l) => l.oracle.name === p.name);
  if (!lane) throw new Error(`no lane for ${p.name}`);
  lane.oracle.tokens.fill(0);
  lane.oracle.tokens.set(base.tokens);
  lane.oracle.capacity = base.capacity;
  lane.oracle.pending = [];
  await lane.oracle.save();
}

interface VerifyContext {
  pool: string;
  format: CrashFormat;
  dirty: Set<string>;
  expectedFiles: string[];
  report: CrashLoopReport;
}

async function verifyAfterRestart(
  client: VdiskClient,
  lanes: LaneVolume[],
  base: VolumeOracle | undefined,
  ctx: VerifyContext,
): Promise<void> {
  await verifyPoolFiles(ctx.pool, ctx.expectedFiles);
  await verifyJobsTerminal(client);
  const oracles = [...lanes.map((l) => l.oracle), ...(base ? [base] : [])];
  // Volumes are independent: checking them side by side keeps both cores busy (qemu-img runs as a process).
  const leaks = await Promise.all(oracles.map((oracle) => verifyVolume(client, oracle, ctx)));
  ctx.report.leaks += leaks.reduce((a, b) => a + b, 0);
}

async function verifyVolume(client: VdiskClient, oracle: VolumeOracle, ctx: VerifyContext): Promise<number> {
  const volume = await client.getVolume(oracle.name);
  verifyVolumeRecord(volume, oracle);
  const file = join(ctx.pool, fileOf(oracle.name, ctx.format));
  if (ctx.dirty.has(oracle.name) && (await qcow2DirtyOnDisk(file)))
    throw new CrashLoopViolation(`${oracle.name}: dirty bit still set on disk after the server reopened it`);
  const observed = await verifyContent(client, oracle, volume.capacityBytes);
  const leaks = ctx.format === "raw" ? undefined : (await qemuCheck(file)).leaks;
  await verifyCheckJob(client, oracle.name, leaks);
  await oracle.settle(volume.capacityBytes, observed);
  return leaks ?? 0;
}
