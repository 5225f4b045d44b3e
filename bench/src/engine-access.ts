import {
  type BlockDriver,
  type BlockImage,
  type CreateOptions,
  driverFor,
  type FormatName,
  openHostFile,
} from "@vdisk/engine";

/** The engine's driver for a format (the registry the server uses too). */
export function engineDriver(format: FormatName): BlockDriver {
  return driverFor(format);
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
  opts: { directWrites?: boolean; writeBehindBytes?: number } = {},
): Promise<BlockImage> {
  const file = await openHostFile(filePath, { readOnly, ...opts });
  try {
    return await engineDriver(format).open(file, { readOnly });
  } catch (err) {
    await file.close().catch(() => {});
    throw err;
  }
}
