import { EngineError } from "../errors.js";
import { hasVmdk4Magic } from "../formats/vmdk/header.js";
import { checkVmdkIdentity } from "../formats/vmdk/metadata.js";

/**
 * Content signatures an upload is screened for, in the spirit of OpenStack's format_inspector: every
 * detector runs over the same bytes, and the verdict (identity.ts) depends on the whole set, so a file
 * that is two things at once is caught instead of being parsed as whichever detector ran first.
 *
 * Detection is pure and reads only the head of the file. It recognises more formats than vdisk accepts:
 * a raw upload that is really a VHD or a LUKS volume must be refused, not stored as "raw".
 */
export interface Signature {
  /** What was recognised (for messages; fixed strings, never text from the file). */
  name: string;
  /**
   * "qcow2"/"vmdk": the file claims to be that container format. "foreign": a container format vdisk
   * does not accept. undefined: content that is still a valid raw disk (ISO 9660/UDF, partition tables).
   */
  container: "qcow2" | "vmdk" | "foreign" | undefined;
}

/** Bytes of the head that detection looks at: the ISO/UDF descriptors start at 32 KiB and may be at 36 KiB. */
export const SIGNATURE_HEAD_BYTES = 0x9001 + 5;

function hasAscii(head: Uint8Array, at: number, text: string): boolean {
  if (head.length < at + text.length) return false;
  for (let i = 0; i < text.length; i++) if (head[at + i] !== text.charCodeAt(i)) return false;
  return true;
}

function hasBytes(head: Uint8Array, at: number, bytes: readonly number[]): boolean {
  return head.length >= at + bytes.length && bytes.every((b, i) => head[at + i] === b);
}

function readU32Le(head: Uint8Array, at: number): number {
  return head.length < at + 4
    ? -1
    : (head[at]! | (head[at + 1]! << 8) | (head[at + 2]! << 16)) + head[at + 3]! * 0x1000000;
}

const QCOW_MAGIC = [0x51, 0x46, 0x49, 0xfb]; // "QFI\xfb": qcow v1 and qcow2 alike
const LUKS_MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];
const VDI_SIGNATURE = 0xbeda107f;

/** A VMDK text descriptor (the start of a descriptor-only file) as the vmdk driver recognises one. */
function isVmdkDescriptorText(head: Uint8Array, fileSize: number): boolean {
  try {
    checkVmdkIdentity(head, fileSize);
  } catch (err) {
    return err instanceof EngineError && err.reason === "VMDK_DESCRIPTOR_FILE";
  }
  return false;
}

/** An MBR with a plausible partition table (boot flags valid, at least one partition), as oslo's mbr check. */
function hasMbr(head: Uint8Array): boolean {
  if (!hasBytes(head, 510, [0x55, 0xaa])) return false;
  let partitions = 0;
  for (let i = 0; i < 4; i++) {
    const entry = 446 + i * 16;
    const bootFlag = head[entry]!;
    if (bootFlag !== 0 && bootFlag !== 0x80) return false;
    if (head[entry + 4] !== 0) partitions++;
  }
  return partitions > 0;
}

/**
 * Every signature found in `head` (the first SIGNATURE_HEAD_BYTES or more of the file, or the whole
 * file if shorter). `fileSize` is the full length of the file.
 */
export function detectSignatures(head: Uint8Array, fileSize: number): Signature[] {
  const found: Signature[] = [];
  const add = (name: string, container: Signature["container"]) => found.push({ name, container });

  if (hasBytes(head, 0, QCOW_MAGIC)) add("qcow2", "qcow2");
  if (hasVmdk4Magic(head)) add("vmdk", "vmdk");
  else if (hasAscii(head, 0, "COWD")) add("vmdk (VMDK3 COWD)", "vmdk");
  else if (isVmdkDescriptorText(head, fileSize)) add("vmdk (text descriptor)", "vmdk");

  if (hasAscii(head, 0, "conectix")) add("vhd", "foreign");
  if (hasAscii(head, 0, "vhdxfile")) add("vhdx", "foreign");
  if (hasBytes(head, 0, [0x51, 0x45, 0x44, 0x00])) add("qed", "foreign");
  if (hasBytes(head, 0, LUKS_MAGIC)) add("luks", "foreign");
  if (readU32Le(head, 0x40) === VDI_SIGNATURE) add("vdi", "foreign");

  for (const at of [0x8001, 0x8801, 0x9001]) {
    if (hasAscii(head, at, "CD001")) {
      add("iso9660", undefined);
      break;
    }
    if (hasAscii(head, at, "NSR02") || hasAscii(head, at, "NSR03")) {
      add("udf", undefined);
      break;
    }
  }
  if (hasAscii(head, 512, "EFI PART") || hasAscii(head, 4096, "EFI PART")) add("gpt", undefined);
  else if (hasMbr(head)) add("mbr", undefined);
  return found;
}
