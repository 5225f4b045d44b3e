import type { SideResult, WorkloadResult } from "./runner.js";
import type { Side } from "./workloads/types.js";

const MiB = 1024 * 1024;

/** A target from issue 8, judged on one side's figures. */
export interface Bar {
  workload: string;
  text: string;
  /** Sides the bar may be judged on, in order of preference (the first with figures is used). */
  sides: Side[];
  judge(side: SideResult): { met: boolean; value: string };
}

export interface BarVerdict {
  workload: string;
  text: string;
  status: "met" | "missed" | "n/a";
  /** Which side the verdict rests on, and the figure. */
  basis: string;
}

const ratioAtMost = (limit: number) => (s: SideResult) => {
  const r = s.ratio?.median ?? Number.NaN;
  return { met: r <= limit, value: `ratio ${r.toFixed(2)}` };
};

const fallocWithEvents = (s: SideResult) => {
  const r = s.ratio?.median ?? Number.NaN;
  const events = [...(s.progressEvents ?? [])].sort((a, b) => a - b);
  const medianEvents = events.length === 0 ? 0 : (events[Math.floor((events.length - 1) / 2)] as number);
  return {
    met: r <= 2.0 && medianEvents >= 10,
    value: `ratio ${r.toFixed(2)}, ${medianEvents} progress events`,
  };
};

const throughputAtLeast = (mibPerSecond: number) => (s: SideResult) => {
  const t = (s.throughputBytesPerSecond ?? 0) / MiB;
  return { met: t >= mibPerSecond, value: `${t.toFixed(0)} MiB/s` };
};

export const BARS: Bar[] = [
  {
    workload: "create-full-qcow2",
    text: "FULL create ratio ≤ 0.5",
    sides: ["server", "engine"],
    judge: ratioAtMost(0.5),
  },
  {
    workload: "create-falloc-raw",
    text: "FALLOC create ratio ≤ 2.0 with ≥ 10 progress events",
    sides: ["server", "engine"],
    judge: fallocWithEvents,
  },
  {
    workload: "create-falloc-qcow2",
    text: "FALLOC create ratio ≤ 2.0 with ≥ 10 progress events",
    sides: ["server", "engine"],
    judge: fallocWithEvents,
  },
  {
    workload: "copy-raw-qcow2",
    text: "raw → qcow2 copy ratio ≤ 1.0",
    sides: ["server", "engine"],
    judge: ratioAtMost(1.0),
  },
  {
    workload: "copy-qcow2-raw",
    text: "qcow2 → raw copy ratio ≤ 1.0",
    sides: ["server", "engine"],
    judge: ratioAtMost(1.0),
  },
  {
    workload: "map-1t",
    text: "map of the 1 TiB image ratio ≤ 1.0 through the server",
    sides: ["server"],
    judge: ratioAtMost(1.0),
  },
  {
    workload: "write-4k",
    text: "4 KiB allocating writes ≥ 0.5× qemu-img bench's rate (time ratio ≤ 2.0)",
    sides: ["engine", "server"],
    judge: ratioAtMost(2.0),
  },
  {
    workload: "read-4k",
    text: "4 KiB reads ≥ 0.5× qemu-img bench's rate (time ratio ≤ 2.0)",
    sides: ["engine"],
    judge: ratioAtMost(2.0),
  },
  {
    workload: "grpc-read",
    text: "gRPC ReadVolume ≥ 500 MiB/s on loopback",
    sides: ["server"],
    judge: throughputAtLeast(500),
  },
  {
    workload: "grpc-write",
    text: "gRPC WriteVolume ≥ 300 MiB/s on loopback",
    sides: ["server"],
    judge: throughputAtLeast(300),
  },
  {
    workload: "grpc-sparse-read",
    text: "sparse read of an empty 1 TiB volume under 1 s",
    sides: ["server"],
    judge: (s) => {
      const t = s.time?.median ?? Number.NaN;
      return { met: t < 1, value: `${t.toFixed(3)} s` };
    },
  },
  {
    workload: "streams4",
    text: "server peak RSS under 300 MiB during four concurrent streams",
    sides: ["server"],
    judge: (s) => {
      const rss = (s.peakRssBytes ?? Number.NaN) / MiB;
      return { met: rss < 300, value: `${rss.toFixed(0)} MiB` };
    },
  },
];

export function judgeBars(results: readonly WorkloadResult[]): BarVerdict[] {
  const verdicts: BarVerdict[] = [];
  for (const bar of BARS) {
    const result = results.find((r) => r.name === bar.workload);
    if (result === undefined) continue;
    const side = bar.sides
      .map((name) => result.sides.find((s) => s.side === name))
      .find((s) => s !== undefined && s.unavailable === undefined && s.time !== undefined);
    if (side === undefined) {
      const preferred = result.sides.find((s) => s.side === bar.sides[0]);
      verdicts.push({
        workload: bar.workload,
        text: bar.text,
        status: "n/a",
        basis: preferred?.unavailable ?? result.error ?? "no figures",
      });
      continue;
    }
    const { met, value } = bar.judge(side);
    const fallback = side.side !== bar.sides[0] ? ` (${bar.sides[0]} n/a)` : "";
    verdicts.push({
      workload: bar.workload,
      text: bar.text,
      status: met ? "met" : "missed",
      basis: `${side.side}${fallback}: ${value}`,
    });
  }
  return verdicts;
}
