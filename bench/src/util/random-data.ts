import { createCipheriv, createHash } from "node:crypto";

/**
 * Incompressible, reproducible bytes: AES-128-CTR keystream under a key derived from the seed. AES-NI
 * makes it several GB/s, so generating test data never dominates a setup phase, and a seed fully
 * determines the content (the same image is rebuilt byte for byte on every run).
 */
export class SeededBytes {
  private readonly cipher;
  private readonly zeros: Buffer;

  constructor(seed: string, blockSize = 1 << 20) {
    const key = createHash("sha256").update(`vdisk-bench:${seed}`).digest();
    this.cipher = createCipheriv("aes-128-ctr", key.subarray(0, 16), key.subarray(16, 32));
    this.zeros = Buffer.alloc(blockSize);
  }

  /** The next `length` bytes of the stream (a fresh buffer). */
  next(length: number): Buffer {
    if (length <= this.zeros.length) return this.cipher.update(this.zeros.subarray(0, length));
    return this.cipher.update(Buffer.alloc(length));
  }
}

/** A small deterministic PRNG (xorshift128+ style on 32-bit halves) for choosing offsets. */
export class SeededRandom {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: string) {
    const h = createHash("sha256").update(`vdisk-bench-rng:${seed}`).digest();
    this.a = h.readUInt32LE(0) | 1;
    this.b = h.readUInt32LE(4);
    this.c = h.readUInt32LE(8);
    this.d = h.readUInt32LE(12);
  }

  /** Uniform in [0, 1). (xoshiro128** on 32-bit state words.) */
  nextFloat(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result / 2 ** 32;
  }

  /** Uniform integer in [0, n). */
  nextInt(n: number): number {
    return Math.floor(this.nextFloat() * n);
  }

  /** `count` distinct integers from [0, n), in ascending order (Floyd's sampling). */
  distinct(count: number, n: number): number[] {
    if (count > n) throw new RangeError(`cannot pick ${count} distinct values from ${n}`);
    const chosen = new Set<number>();
    for (let j = n - count; j < n; j++) {
      const t = this.nextInt(j + 1);
      chosen.add(chosen.has(t) ? j : t);
    }
    return [...chosen].sort((x, y) => x - y);
  }

  /** Fisher–Yates shuffle in place. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.nextInt(i + 1);
      const tmp = items[i] as T;
      items[i] = items[j] as T;
      items[j] = tmp;
    }
    return items;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
