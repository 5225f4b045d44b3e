import type { BlockDriver } from "../../block-image.js";
import { createQcow2, openQcow2, probeQcow2 } from "./open.js";

/** The qcow2 format driver (QEMU's bdrv_qcow2): v2/v3, backing chains, zero and compressed clusters. */
export const qcow2Driver: BlockDriver = {
  format: "qcow2",
  probe: probeQcow2,
  create: createQcow2,
  open: openQcow2,
};

export { Qcow2Image } from "./qcow2-image.js";
