import { rm, writeFile } from "node:fs/promises";
import path from "node:path";

/**
 * Readiness of the pool: a small file written and removed in the pool. Fails when the directory is
 * gone, read-only (remounted ro after an I/O error) or full, which is when the server can't serve writes
 * and load balancers should stop sending them (reliability.md §d item 10).
 */
export async function poolWritable(root: string): Promise<boolean> {
  // Under the state directory: a file in the pool root would look like a stray volume to reconcile.
  const probe = path.join(root, ".vdisk", "health-probe");
  try {
    await writeFile(probe, "ok\n");
    await rm(probe, { force: true });
    return true;
  } catch {
    return false;
  }
}
