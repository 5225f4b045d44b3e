import type { AllocateModeName, VdiskClient, ZeroDetectionName } from "@vdisk/sdk";
import type { VolumeOracle } from "./oracle.js";
import type { Random } from "./random.js";
import { SECTOR, sectorsOf } from "./sectors.js";

/** One volume's role in the loop. */
export interface LaneVolume {
  oracle: VolumeOracle;
  /** Raw volumes only know FULL; qcow2 also COPY_UP and METADATA. */
  allocateModes: readonly AllocateModeName[];
  /** Overlays are flattened sometimes and only grow (a shrink would expose backing data past the new end). */
  overlay: boolean;
  minCapacity: number;
}

export interface LaneStats {
  ops: number;
  jobs: string[];
}

type OpKind = "write" | "zeroWrite" | "writeZeroes" | "discard" | "flush" | "resize" | "allocate" | "flatten";

const WEIGHTS: Record<OpKind, number> = {
  write: 40,
  zeroWrite: 6,
  writeZeroes: 10,
  discard: 10,
  flush: 10,
  resize: 5,
  allocate: 5,
  flatten: 3,
};

/** Unique per run, so every write's sectors are distinguishable from every other write's. */
export class TokenSource {
  constructor(private last: number) {}
  next(): number {
    this.last = (this.last + 1) >>> 0 || 1;
    return this.last;
  }
}

/**
 * Runs random operations on one volume, one at a time, until `stopped()` (the driver is about to kill
 * the server) — after which errors are the crash's doing and end the lane quietly. An error before that is
 * a real failure and is thrown.
 */
export async function runLane(
  client: VdiskClient,
  lane: LaneVolume,
  random: Random,
  tokens: TokenSource,
  stopped: () => boolean,
  onOp: () => void = () => {},
): Promise<LaneStats> {
  const stats: LaneStats = { ops: 0, jobs: [] };
  const oracle = lane.oracle;
  while (!stopped()) {
    const kind = random.weighted(WEIGHTS);
    try {
      await runOp(client, lane, kind, random, tokens, stats);
      stats.ops++;
      onOp();
    } catch (err) {
      oracle.note(`  ^ failed: ${String(err).slice(0, 120)}`);
      if (stopped()) break;
      throw new Error(`${kind} on ${oracle.name} failed before the kill: ${String(err)}`, { cause: err });
    }
  }
  return stats;
}

function range(random: Random, sectors: number): { first: number; count: number } {
  const size = random.weighted({ small: 5, medium: 3, large: 2 });
  const limit = size === "small" ? 8 : size === "medium" ? 160 : 2048;
  const count = Math.min(sectors, random.int(1, limit));
  const first = random.int(0, sectors - count);
  return { first, count };
}

async function runOp(
  client: VdiskClient,
  lane: LaneVolume,
  kind: OpKind,
  random: Random,
  tokens: TokenSource,
  stats: LaneStats,
): Promise<void> {
  const oracle = lane.oracle;
  const name = oracle.name;
  switch (kind) {
    case "write":
    case "zeroWrite": {
      const { first, count } = range(random, oracle.sectors);
      const token = kind === "write" ? tokens.next() : 0;
      const zeroDetection: ZeroDetectionName = random.pick(["off", "on", "unmap"]);
      await oracle.begin({ kind: "data", first, count, token });
      oracle.note(
        `${kind} token ${token} sectors ${first}+${count} detection ${zeroDetection}`,
        first,
        count,
      );
      // A write stream ends with a flush: its acknowledgement makes it durable.
      await client.writeVolume(
        name,
        [{ offset: first * SECTOR, data: sectorsOf(token, first, count, oracle.tag) }],
        { zeroDetection },
      );
      await oracle.durable();
      return;
    }
    case "writeZeroes": {
      const { first, count } = range(random, oracle.sectors);
      await oracle.begin({ kind: "data", first, count, token: 0 });
      const unary = random.chance(0.5);
      const mayUnmap = random.chance(0.5);
      oracle.note(
        `writeZeroes ${unary ? `unary mayUnmap ${mayUnmap}` : "in a write stream"} sectors ${first}+${count}`,
        first,
        count,
      );
      if (unary) {
        await client.writeZeroes(name, first * SECTOR, count * SECTOR, { mayUnmap });
      } else {
        await client.writeVolume(name, [{ offset: first * SECTOR, length: count * SECTOR, zero: true }]);
        await oracle.durable();
      }
      return;
    }
    case "discard": {
      const { first, count } = range(random, oracle.sectors);
      await oracle.begin({ kind: "data", first, count, token: 0 });
      oracle.note(`discard sectors ${first}+${count}`, first, count);
      await client.discard(name, first * SECTOR, count * SECTOR);
      return; // not durable until a flush
    }
    case "flush":
      oracle.note("flush");
      await client.writeVolume(name, [{ flush: true }]);
      await oracle.durable();
      return;
    case "resize": {
      const step = 64 * 1024;
      const low = lane.overlay ? oracle.capacity : lane.minCapacity;
      if (low >= oracle.maxCapacity) return;
      // Sizes off the cluster grid too: the tail of a partial cluster must read as zeros after a grow.
      const capacity = random.chance(0.5)
        ? random.int(low / SECTOR, oracle.maxCapacity / SECTOR) * SECTOR
        : random.int(Math.ceil(low / step), oracle.maxCapacity / step) * step;
      if (capacity === oracle.capacity) return;
      await oracle.begin({ kind: "resize", capacity });
      oracle.note(`resize ${oracle.capacity} -> ${capacity}`);
      const handle = client.resizeVolume(name, capacity, { allowShrink: capacity < oracle.capacity });
      handle.jobId.then((id) => stats.jobs.push(id)).catch(() => {});
      await handle.result;
      await oracle.durable();
      return;
    }
    case "allocate": {
      const { first, count } = range(random, oracle.sectors);
      const mode = random.pick(lane.allocateModes);
      oracle.note(`allocate ${mode} sectors ${first}+${count}`, first, count);
      const handle = client.allocateRange(name, {
        mode,
        offset: first * SECTOR,
        length: count * SECTOR,
      });
      handle.jobId.then((id) => stats.jobs.push(id)).catch(() => {});
      await handle.result;
      return; // content is unchanged, whatever happens to the job
    }
    case "flatten": {
      if (!lane.overlay) return;
      oracle.note("flatten");
      const handle = client.flattenVolume(name);
      handle.jobId.then((id) => stats.jobs.push(id)).catch(() => {});
      await handle.result;
      return;
    }
  }
}
