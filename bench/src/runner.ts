import { dropCaches, readPeakRss, resetPeakRss, syncAll } from "./util/proc.js";
import { type Summary, summarize } from "./util/stats.js";
import type { BenchContext, Contestant, Side, Workload } from "./workloads/types.js";

export type CacheMode = "hot" | "cold";

export interface RunSettings {
  pairs: number;
  warmup: number;
  cache: CacheMode;
}

export interface SideResult {
  side: Side;
  label: string;
  /** Why this side has no figures (not served yet, or failed). */
  unavailable?: string;
  seconds?: number[];
  time?: Summary;
  /** bytes / median seconds. */
  throughputBytesPerSecond?: number;
  /** operations / median seconds. */
  operationsPerSecond?: number;
  /** Largest peak RSS over the measured runs. */
  peakRssBytes?: number;
  progressEvents?: number[];
  /** vdisk time / peer time, round by round (vdisk sides only). */
  ratios?: number[];
  ratio?: Summary;
}

export interface WorkloadResult {
  name: string;
  title: string;
  peer: string;
  parameters: Record<string, string | number>;
  bytes?: number;
  operations?: number;
  sides: SideResult[];
  error?: string;
}

interface Collected {
  contestant: Contestant;
  seconds: number[];
  rss: number[];
  events: number[];
  failure?: string;
}

/**
 * Runs a workload's contestants alternately — peer, server, engine, peer, server, engine, … — so drift in
 * the machine (other jobs, page-cache state, thermal) hits every side alike; the first `warmup` rounds
 * are discarded. Before every run: sync (and, in cold mode, drop caches), so no run pays for another's
 * write-back.
 */
export async function runWorkload(
  workload: Workload,
  ctx: BenchContext,
  settings: RunSettings,
): Promise<WorkloadResult> {
  const base = { name: workload.name, title: workload.title, peer: workload.peer };
  let prepared: Awaited<ReturnType<Workload["prepare"]>>;
  try {
    prepared = await workload.prepare(ctx);
  } catch (err) {
    return { ...base, parameters: {}, sides: [], error: describe(err) };
  }
  const collected: Collected[] = prepared.contestants.map((contestant) => ({
    contestant,
    seconds: [],
    rss: [],
    events: [],
    ...(contestant.unavailable === undefined ? {} : { failure: contestant.unavailable }),
  }));
  try {
    const rounds = settings.warmup + settings.pairs;
    for (let round = 0; round < rounds; round++) {
      const measured = round >= settings.warmup;
      for (const entry of collected) {
        if (entry.failure !== undefined) continue;
        const c = entry.contestant;
        try {
          await c.before?.();
          if (settings.cache === "cold") await dropCaches();
          else syncAll();
          const rssPid = c.side === "server" ? ctx.serverPid : c.side === "engine" ? "self" : undefined;
          if (rssPid !== undefined) await resetPeakRss(rssPid);
          const sample = await c.run();
          const rss = sample.peakRssBytes ?? (rssPid === undefined ? undefined : await readPeakRss(rssPid));
          ctx.log(
            `  ${workload.name} ${c.side}${measured ? "" : " (warm-up)"}: ${sample.seconds.toFixed(3)} s` +
              (sample.progressEvents === undefined ? "" : `, ${sample.progressEvents} progress events`),
          );
          if (measured) {
            entry.seconds.push(sample.seconds);
            if (rss !== undefined) entry.rss.push(rss);
            if (sample.progressEvents !== undefined) entry.events.push(sample.progressEvents);
          }
          if (round === 0) await c.check?.();
          await c.after?.();
        } catch (err) {
          entry.failure = `failed: ${describe(err)}`;
          ctx.log(`  ${workload.name} ${c.side}: ${entry.failure}`);
          await Promise.resolve(c.after?.()).catch(() => {});
        }
      }
    }
  } finally {
    await prepared
      .teardown?.()
      .catch((err: unknown) => ctx.log(`  teardown of ${workload.name}: ${describe(err)}`));
  }
  const peer = collected.find((e) => e.contestant.side === "peer");
  const sides = collected.map((entry) => sideResult(entry, peer, prepared.bytes, prepared.operations));
  return {
    ...base,
    parameters: prepared.parameters,
    ...(prepared.bytes === undefined ? {} : { bytes: prepared.bytes }),
    ...(prepared.operations === undefined ? {} : { operations: prepared.operations }),
    sides,
  };
}

function sideResult(
  entry: Collected,
  peer: Collected | undefined,
  bytes: number | undefined,
  operations: number | undefined,
): SideResult {
  const { contestant } = entry;
  const result: SideResult = { side: contestant.side, label: contestant.label };
  if (entry.failure !== undefined || entry.seconds.length === 0) {
    result.unavailable = entry.failure ?? "no measured runs";
    return result;
  }
  const time = summarize(entry.seconds);
  result.seconds = entry.seconds;
  result.time = time;
  if (bytes !== undefined) result.throughputBytesPerSecond = bytes / time.median;
  if (operations !== undefined) result.operationsPerSecond = operations / time.median;
  if (entry.rss.length > 0) result.peakRssBytes = Math.max(...entry.rss);
  if (entry.events.length > 0) result.progressEvents = entry.events;
  if (contestant.side !== "peer" && peer !== undefined && peer.failure === undefined) {
    const n = Math.min(entry.seconds.length, peer.seconds.length);
    const ratios: number[] = [];
    for (let i = 0; i < n; i++) ratios.push((entry.seconds[i] as number) / (peer.seconds[i] as number));
    if (ratios.length > 0) {
      result.ratios = ratios;
      result.ratio = summarize(ratios);
    }
  }
  return result;
}

export function describe(err: unknown): string {
  if (err instanceof Error) return err.message.split("\n")[0] ?? err.name;
  return String(err);
}
