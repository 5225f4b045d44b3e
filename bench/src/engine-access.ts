import {
  type BlockDriver,
  type BlockImage,
  type CreateOptions,
  driverFor,
  EngineError,
  type FormatName,
  openHostFile,
} from "@vdisk/engine";
// The engine registry serves qcow2 once the qcow2 branch lands in main; until then its driver is taken from
// the engine sources directly (bench only measures, it never ships).
import { qcow2Driver } from "../../engine/src/formats/qcow2/index.js";

/** The engine's driver for a format, the registry's when it has one. */
export function engineDriver(format: FormatName): BlockDriver {
  try {
    return driverFor(format);
  } catch (err) {
    if (format === "qcow2" && err instanceof EngineError && err.code === "UNSUPPORTED") return qcow2Driver;
    throw err;
  }
}

/** Creates a new image file with the engine (as CreateVolume does, minus the catalog and the rename) and flushes it. */
export async function engineCreate(
  filePath: string,
  format: FormatName,
  opts: Omit<CreateOptions, "signal">,
): Promise<void> {
  const file = await openHostFile(filePath, { readOnly: false, create: "new" });
  try {
    await engineDriver(format).create(file, opts);
    await file.flush();
  } finally {
    await file.close();
  }
}

/** Opens an image file with the engine; the caller closes it. */
export async function engineOpen(
  filePath: string,
  format: FormatName,
  readOnly: boolean,
): Promise<BlockImage> {
  const file = await openHostFile(filePath, { readOnly });
  try {
    return await engineDriver(format).open(file, { readOnly });
  } catch (err) {
    await file.close().catch(() => {});
    throw err;
  }
}
