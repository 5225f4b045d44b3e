import { randomBytes } from "node:crypto";
import { constants as fsConstants, existsSync } from "node:fs";
import { mkdtemp, open, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DownloadFileWriter } from "./download-file.js";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Splits `data` into pieces of the given lengths (the last takes the rest), as messages arrive. */
function pieces(data: Buffer, ...lengths: number[]): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const length of lengths) {
    out.push(data.subarray(at, at + length));
    at += length;
  }
  out.push(data.subarray(at));
  return out;
}

async function takesDirectIo(dir: string): Promise<boolean> {
  try {
    const probe = await open(
      join(dir, "probe"),
      fsConstants.O_CREAT | fsConstants.O_WRONLY | fsConstants.O_DIRECT,
    );
    await probe.close();
    return true;
  } catch {
    return false;
  }
}

// The work directory's file system (ext4 on CI) takes O_DIRECT; tmpfs (/dev/shm) refuses it.
const bases = [tmpdir(), "/dev/shm"].filter((d) => existsSync(d));

describe.each(bases)("DownloadFileWriter in %s", (base) => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(base, "vdisk-download-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("lands every byte of unaligned, aligned and concurrent writes at its offset, holes stay holes", async () => {
    const path = join(dir, "out.raw");
    const writer = await DownloadFileWriter.create(path, { maxConcurrentWrites: 2, stagingBytes: 256 * KiB });
    const a = randomBytes(4 * MiB + 1234); // longer than the staging buffer, unaligned end
    const b = randomBytes(300 * KiB); // unaligned start and end
    const c = randomBytes(10 * KiB); // too small for a direct write
    const aAt = 0;
    const bAt = 8 * MiB + 777;
    const cAt = 12 * MiB;
    try {
      // Three at once: more writes than staging buffers, so one goes buffered.
      await Promise.all([
        writer.write(pieces(a, 1, 64 * KiB, 3 * MiB), aAt, a.length),
        writer.write(pieces(b, 100 * KiB - 5), bAt, b.length),
        writer.write([c], cAt, c.length),
      ]);
      await writer.finish(16 * MiB);
      // Where the file system takes O_DIRECT, the aligned bodies went that way; elsewhere nothing did.
      if (await takesDirectIo(dir)) expect(writer.directBytes).toBeGreaterThanOrEqual(4 * MiB);
      else expect(writer.directBytes).toBe(0);
    } finally {
      await writer.close();
    }
    const file = await readFile(path);
    expect(file.length).toBe(16 * MiB);
    expect(file.subarray(aAt, aAt + a.length).equals(a)).toBe(true);
    expect(file.subarray(bAt, bAt + b.length).equals(b)).toBe(true);
    expect(file.subarray(cAt, cAt + c.length).equals(c)).toBe(true);
    const gaps = [
      file.subarray(a.length, bAt),
      file.subarray(bAt + b.length, cAt),
      file.subarray(cAt + c.length),
    ];
    for (const gap of gaps) expect(gap.equals(Buffer.alloc(gap.length))).toBe(true);
    // 16 MiB long, ~4.3 MiB written: the unwritten ranges were never allocated.
    expect((await stat(path)).blocks * 512).toBeLessThan(6 * MiB);
  });
});
