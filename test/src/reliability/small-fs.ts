import { execFile } from "node:child_process";
import { mkdir, mkdtemp, open, rm, statfs, unlink } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** A filesystem of a few MiB mounted for one test file, with a ballast file that can fill it to the last block. */
export interface SmallFs {
  kind: "tmpfs" | "ext4";
  /** Mount point. */
  dir: string;
  /** Bytes still available to an unprivileged writer (statfs f_bavail). */
  freeBytes(): Promise<number>;
  /** Writes the ballast until the filesystem refuses with ENOSPC; resolves with the ballast size. */
  fill(): Promise<number>;
  /** Shrinks the ballast so that about `bytes` are free again. */
  release(bytes: number): Promise<void>;
  /** Deletes the ballast. */
  free(): Promise<void>;
  unmount(): Promise<void>;
}

/**
 * Mounting needs CAP_SYS_ADMIN. CI runs as root; anywhere else this must fail loudly rather than skip,
 * because a skipped ENOSPC test looks exactly like a passing one.
 */
async function mountOrExplain(args: string[], what: string): Promise<void> {
  try {
    await run("mount", args);
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? String(err);
    throw new Error(
      `cannot mount ${what} for the ENOSPC test (needs root / CAP_SYS_ADMIN; uid=${process.getuid?.()}): ${stderr.trim()}`,
    );
  }
}

export async function mountTmpfs(sizeMiB: number): Promise<SmallFs> {
  await mkdir("/tmp/vdisk-enospc", { recursive: true });
  const dir = await mkdtemp("/tmp/vdisk-enospc/tmpfs-");
  await mountOrExplain(
    ["-t", "tmpfs", "-o", `size=${sizeMiB}m,mode=0700`, "tmpfs", dir],
    `a ${sizeMiB} MiB tmpfs`,
  );
  return smallFs("tmpfs", dir, async () => {});
}

/**
 * A loop-mounted ext4 image: the realistic case (real block allocation, fallocate, punch hole, unwritten
 * extents). No reserved blocks (-m 0): the server runs as root here and would otherwise write into them.
 */
export async function mountExt4(sizeMiB: number): Promise<SmallFs> {
  await mkdir("/tmp/vdisk-enospc", { recursive: true });
  const dir = await mkdtemp("/tmp/vdisk-enospc/ext4-");
  const image = `${dir}.img`;
  const file = await open(image, "w");
  await file.truncate(sizeMiB * 1024 * 1024);
  await file.close();
  try {
    await run("mkfs.ext4", ["-q", "-F", "-m", "0", image]);
  } catch (err) {
    await rm(image, { force: true });
    throw new Error(`mkfs.ext4 failed (is e2fsprogs installed?): ${String(err)}`);
  }
  try {
    await mountOrExplain(["-o", "loop", image, dir], `a ${sizeMiB} MiB ext4 image`);
  } catch (err) {
    await rm(image, { force: true });
    throw err;
  }
  return smallFs("ext4", dir, () => rm(image, { force: true }));
}

function smallFs(kind: SmallFs["kind"], dir: string, afterUnmount: () => Promise<void>): SmallFs {
  const ballast = join(dir, "ballast");
  return {
    kind,
    dir,
    async freeBytes() {
      const s = await statfs(dir);
      return s.bavail * s.bsize;
    },
    async fill() {
      const handle = await open(ballast, "a");
      let size = (await handle.stat()).size;
      try {
        // Big pieces first, then single blocks, so the last free block is taken too.
        for (const piece of [1024 * 1024, 64 * 1024, 4096, 512]) {
          const bytes = Buffer.alloc(piece, 0xee);
          for (;;) {
            try {
              const { bytesWritten } = await handle.write(bytes, 0, piece, size);
              size += bytesWritten;
              if (bytesWritten < piece) break;
            } catch (err) {
              if ((err as NodeJS.ErrnoException).code === "ENOSPC") break;
              throw err;
            }
          }
        }
        await handle.sync();
      } finally {
        await handle.close();
      }
      return size;
    },
    async release(bytes) {
      const handle = await open(ballast, "r+");
      try {
        const { size } = await handle.stat();
        await handle.truncate(Math.max(0, size - bytes));
        await handle.sync();
      } finally {
        await handle.close();
      }
    },
    async free() {
      await unlink(ballast).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "ENOENT") throw err;
      });
    },
    async unmount() {
      try {
        await run("umount", [dir]);
      } catch {
        // Something still holds a file open (a failed test's server): detach now, the kernel finishes later.
        await run("umount", ["-l", dir]).catch(() => {});
      }
      await rm(dir, { recursive: true, force: true }).catch(() => {});
      await afterUnmount();
    },
  };
}
