import { randomUUID } from "node:crypto";
import fs from "node:fs/promises";
import path from "node:path";
import { EngineError, type FormatName } from "@vdisk/engine";
import { validateVolumeName } from "./names.js";

const EXTENSIONS: Record<FormatName, string> = { raw: ".raw", qcow2: ".qcow2", vmdk: ".vmdk" };

/**
 * The pool directory: one image file per volume (POOL/NAME.raw|.qcow2|.vmdk), server state under
 * POOL/.vdisk/. New images are built under POOL/.vdisk/tmp/ and published with rename(2), so a volume's
 * final file name only ever refers to a complete, fsync'd image.
 */
export class Pool {
  readonly root: string;
  readonly stateDir: string;
  readonly tmpDir: string;

  constructor(root: string) {
    this.root = path.resolve(root);
    this.stateDir = path.join(this.root, ".vdisk");
    this.tmpDir = path.join(this.stateDir, "tmp");
  }

  get catalogPath(): string {
    return path.join(this.stateDir, "catalog.db");
  }

  async init(): Promise<void> {
    await fs.mkdir(this.tmpDir, { recursive: true });
  }

  /** The file name (no directory) of a volume — also what an overlay's header names as its backing. */
  fileName(name: string, format: FormatName): string {
    return validateVolumeName(name) + EXTENSIONS[format];
  }

  volumePath(name: string, format: FormatName): string {
    return path.join(this.root, this.fileName(name, format));
  }

  /**
   * A fresh temp path for building a volume; unique so a retried creation never reuses a half-written
   * file. "~" can't occur in a volume name, so NAME~ identifies the volume's temp files unambiguously.
   */
  tempPath(name: string, format: FormatName): string {
    return path.join(this.tmpDir, `${validateVolumeName(name)}~${randomUUID()}${EXTENSIONS[format]}.tmp`);
  }

  /** Temp files that belong to the volume `name` (from any earlier attempt). */
  async tempFilesOf(name: string): Promise<string[]> {
    const prefix = `${name}~`;
    return (await this.listTemp()).filter((f) => path.basename(f).startsWith(prefix));
  }

  async listTemp(): Promise<string[]> {
    const entries = await fs.readdir(this.tmpDir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === "ENOENT") return [] as string[];
      throw err;
    });
    return entries.map((e) => path.join(this.tmpDir, e));
  }

  /**
   * Publishes a fully written and fsync'd temp file as the volume's file: rename (atomic; never replaces an
   * existing file) and then fsync the pool directory so the new name itself survives a crash.
   */
  async publish(tempPath: string, name: string, format: FormatName): Promise<string> {
    const finalPath = this.volumePath(name, format);
    // rename(2) silently replaces; a link-then-unlink would not, but a stray file under a cataloged name
    // means someone wrote into the pool by hand, and we refuse rather than clobber it.
    if (await exists(finalPath)) {
      throw new EngineError("ALREADY_EXISTS", `a file for volume "${name}" already exists in the pool`, {
        reason: "POOL_FILE_EXISTS",
      });
    }
    await fs.rename(tempPath, finalPath);
    await this.syncDir(this.root);
    return finalPath;
  }

  /** Removes a file if present, then fsyncs its directory so the removal is durable. */
  async removeFile(file: string): Promise<boolean> {
    try {
      await fs.unlink(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw err;
    }
    await this.syncDir(path.dirname(file));
    return true;
  }

  /** Truncates a file to `size` and makes the new size durable. */
  async truncateFile(file: string, size: number): Promise<void> {
    const handle = await fs.open(file, "r+");
    try {
      await handle.truncate(size);
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  async syncDir(dir: string): Promise<void> {
    const handle = await fs.open(dir, "r");
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  /** Regular files in the pool root (not under .vdisk). */
  async listVolumeFiles(): Promise<string[]> {
    const entries = await fs.readdir(this.root, { withFileTypes: true });
    return entries.filter((e) => e.name !== ".vdisk").map((e) => e.name);
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.lstat(file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}
