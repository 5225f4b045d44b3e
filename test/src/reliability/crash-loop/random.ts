/**
 * A small seeded PRNG (SplitMix32-style mixing over a 32-bit counter): the same seed gives the same
 * workload, so a failing seed reproduces. Not for anything but test schedules.
 */
export class Random {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform 32-bit unsigned integer. */
  next(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    return mix32(this.state);
  }

  /** Uniform integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor((this.next() / 2 ** 32) * (max - min + 1));
  }

  /** true with probability p. */
  chance(p: number): boolean {
    return this.next() / 2 ** 32 < p;
  }

  pick<T>(items: readonly T[]): T {
    const item = items[this.int(0, items.length - 1)];
    if (item === undefined) throw new RangeError("pick from an empty list");
    return item;
  }

  /** Picks a key with probability proportional to its weight. */
  weighted<K extends string>(weights: Readonly<Record<K, number>>): K {
    const entries = Object.entries(weights) as [K, number][];
    const total = entries.reduce((sum, [, w]) => sum + w, 0);
    let at = (this.next() / 2 ** 32) * total;
    for (const [key, weight] of entries) {
      if (at < weight) return key;
      at -= weight;
    }
    return (entries[entries.length - 1] as [K, number])[0];
  }

  /** An independent stream derived from this one (e.g. one per volume), so schedules don't shift each other. */
  fork(): Random {
    return new Random(this.next());
  }
}

/** Murmur3-style finaliser: a good avalanche for consecutive inputs. */
export function mix32(x: number): number {
  let z = x >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}
