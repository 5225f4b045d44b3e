import type { BlockDriver } from "../block-image.js";
import { EngineError } from "../errors.js";
import type { FormatName } from "../types.js";
import { qcow2Driver } from "./qcow2/index.js";
import { rawDriver } from "./raw/index.js";
import { vmdkDriver } from "./vmdk/index.js";

const drivers = new Map<FormatName, BlockDriver>([
  ["raw", rawDriver],
  ["qcow2", qcow2Driver],
  ["vmdk", vmdkDriver],
]);

/** The driver for a stored format. Formats are never guessed from content here (see the import inspector). */
export function driverFor(format: FormatName): BlockDriver {
  const driver = drivers.get(format);
  if (!driver) throw new EngineError("UNSUPPORTED", `format ${format} is not supported yet`, { reason: "FORMAT_UNSUPPORTED" });
  return driver;
}
