import { corrupt, quoteImageText, unsupported } from "./errors.js";

export type VmdkSubformat = "monolithicSparse" | "streamOptimized";
export type VmdkAdapterType = "ide" | "lsilogic" | "buslogic" | "legacyESX";

/** CID value meaning "no parent" in parentCID. */
export const NO_PARENT_CID = 0xffffffff;

export interface ExtentLine {
  access: string;
  sectors: number;
  type: string;
  fileName: string | undefined;
  offset: number | undefined;
}

export interface VmdkDescriptor {
  /** Top-level `key=value` pairs (ddb.* included), values unquoted. */
  entries: Map<string, string>;
  extents: ExtentLine[];
  cid: number;
  parentCid: number;
  createType: string | undefined;
}

const EXTENT_LINE =
  /^(RW|RDONLY|NOACCESS)\s+(\d{1,20})\s+([A-Za-z]{1,16})(?:\s+"([^"]*)"(?:\s+(\d{1,20}))?)?\s*$/i;
const KEY_VALUE = /^([A-Za-z0-9_.]{1,128})\s*=\s*(.*?)\s*$/;

/** Decodes the descriptor region: text up to the first NUL, UTF-8, no control characters but tab/CR/LF. */
export function decodeDescriptorText(region: Uint8Array): string {
  const nul = region.indexOf(0);
  const bytes = nul < 0 ? region : region.subarray(0, nul);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw corrupt("VMDK_BAD_DESCRIPTOR", "descriptor is not valid UTF-8 text");
  }
  // biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point
  if (/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(text)) {
    throw corrupt("VMDK_BAD_DESCRIPTOR", "descriptor contains control characters");
  }
  return text;
}

function unquote(value: string): string {
  return value.length >= 2 && value.startsWith('"') && value.endsWith('"') ? value.slice(1, -1) : value;
}

function parseCid(value: string | undefined, what: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (!/^[0-9a-fA-F]{1,8}$/.test(value))
    throw corrupt("VMDK_BAD_DESCRIPTOR", `malformed ${what} ${quoteImageText(value)}`);
  return Number.parseInt(value, 16);
}

/** Parses descriptor text. Every line must be a comment, a key=value pair or an extent line (oslo's rule). */
export function parseDescriptor(text: string): VmdkDescriptor {
  const entries = new Map<string, string>();
  const extents: ExtentLine[] = [];
  for (const rawLine of text.split(/\r?\n/)) {
    const line = rawLine.trim();
    if (line === "" || line.startsWith("#")) continue;
    const extent = EXTENT_LINE.exec(line);
    if (extent) {
      const sectors = Number(extent[2]);
      const offset = extent[5] === undefined ? undefined : Number(extent[5]);
      if (!Number.isSafeInteger(sectors) || (offset !== undefined && !Number.isSafeInteger(offset))) {
        throw corrupt("VMDK_BAD_DESCRIPTOR", "extent line numbers out of range");
      }
      extents.push({
        access: extent[1]!.toUpperCase(),
        sectors,
        type: extent[3]!.toUpperCase(),
        fileName: extent[4],
        offset,
      });
      continue;
    }
    const kv = KEY_VALUE.exec(line);
    if (!kv) throw corrupt("VMDK_BAD_DESCRIPTOR", `unrecognised descriptor line ${quoteImageText(line)}`);
    const key = kv[1]!;
    if (entries.has(key))
      throw corrupt("VMDK_BAD_DESCRIPTOR", `duplicate descriptor key ${quoteImageText(key)}`);
    entries.set(key, unquote(kv[2]!));
  }
  return {
    entries,
    extents,
    cid: parseCid(entries.get("CID"), "CID", 0),
    parentCid: parseCid(entries.get("parentCID"), "parentCID", NO_PARENT_CID),
    createType: entries.get("createType"),
  };
}

/**
 * Accepts only a self-contained image: one SPARSE extent that is this file, no parent. Anything that
 * would make a reader open another host file is refused before any further I/O (CVE-2022-47951 class).
 */
export function validateEmbeddedDescriptor(desc: VmdkDescriptor, capacitySectors: number): void {
  const createType = desc.createType;
  if (createType !== undefined && createType !== "monolithicSparse" && createType !== "streamOptimized") {
    throw unsupported("VMDK_UNSUPPORTED_CREATE_TYPE", `unsupported createType ${quoteImageText(createType)}`);
  }
  const version = desc.entries.get("version");
  if (version !== undefined && !/^[123]$/.test(version)) {
    throw unsupported(
      "VMDK_UNSUPPORTED_VERSION",
      `unsupported descriptor version ${quoteImageText(version)}`,
    );
  }
  if (desc.entries.has("parentFileNameHint") || desc.parentCid !== NO_PARENT_CID) {
    throw unsupported("VMDK_PARENT_LINK", "image links to a parent image");
  }
  if (desc.extents.length === 0) throw corrupt("VMDK_BAD_DESCRIPTOR", "descriptor lists no extent");
  if (desc.extents.length > 1)
    throw unsupported("VMDK_EXTERNAL_EXTENT", "descriptor lists more than one extent");
  const extent = desc.extents[0]!;
  const name = extent.fileName;
  if (
    extent.type !== "SPARSE" ||
    name === undefined ||
    name === "" ||
    name === "." ||
    name === ".." ||
    /[/\\]/.test(name) ||
    extent.offset !== undefined
  ) {
    throw unsupported("VMDK_EXTERNAL_EXTENT", "extent refers to another file");
  }
  if (extent.access === "NOACCESS") throw unsupported("VMDK_EXTERNAL_EXTENT", "extent is marked NOACCESS");
  if (extent.sectors !== capacitySectors) {
    throw corrupt(
      "VMDK_EXTENT_SIZE_MISMATCH",
      `extent of ${extent.sectors} sectors in a ${capacitySectors}-sector image`,
    );
  }
}

export interface DescriptorFields {
  cid: number;
  createType: VmdkSubformat;
  capacitySectors: number;
  fileName: string;
  adapterType: VmdkAdapterType;
  hwVersion: string;
  toolsVersion: string;
}

/** Writes a descriptor in the layout QEMU and VMware produce, so either tool reads it unchanged. */
export function serializeDescriptor(f: DescriptorFields): string {
  const heads = f.adapterType === "ide" ? 16 : 255;
  const cylinders = Math.floor(f.capacitySectors / (heads * 63)); // as QEMU: whole cylinders only
  return [
    "# Disk DescriptorFile",
    "version=1",
    `CID=${f.cid.toString(16).padStart(8, "0")}`,
    "parentCID=ffffffff",
    `createType="${f.createType}"`,
    "",
    "# Extent description",
    `RW ${f.capacitySectors} SPARSE "${f.fileName}"`,
    "",
    "# The Disk Data Base",
    "#DDB",
    "",
    `ddb.virtualHWVersion = "${f.hwVersion}"`,
    `ddb.geometry.cylinders = "${cylinders}"`,
    `ddb.geometry.heads = "${heads}"`,
    'ddb.geometry.sectors = "63"',
    `ddb.adapterType = "${f.adapterType}"`,
    `ddb.toolsVersion = "${f.toolsVersion}"`,
    "",
  ].join("\n");
}

/** Replaces the value of the CID line, leaving every other byte of the descriptor as it was. */
export function replaceCid(text: string, cid: number): string {
  const hex = cid.toString(16).padStart(8, "0");
  return text.replace(/^(\s*CID\s*=\s*)[0-9a-fA-F]{1,8}/m, `$1${hex}`);
}

/** A fresh content ID; ffffffff/fffffffe are avoided since they mean "no parent" / "unset" to some tools. */
export function randomCid(): number {
  const v = new Uint32Array(1);
  do crypto.getRandomValues(v);
  while (v[0]! >= 0xfffffffe);
  return v[0]!;
}
