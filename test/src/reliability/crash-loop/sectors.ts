import { mix32 } from "./random.js";

/**
 * Every 512-byte sector the loop writes is self-describing: it carries the write's token, its own sector
 * number and its volume's tag, followed by bytes derived from those three. So a read-back sector names
 * which write it came from, and data from another offset or another volume is recognised as such
 * (reliability.md §c: "no bytes from another offset/volume"). Token 0 is the all-zero sector.
 */
export const SECTOR = 512;
const WORDS = SECTOR / 4;

export function fillSector(
  view: DataView,
  at: number,
  token: number,
  sector: number,
  volumeTag: number,
): void {
  if (token === 0) {
    for (let w = 0; w < WORDS; w++) view.setUint32(at + w * 4, 0, true);
    return;
  }
  view.setUint32(at, token, true);
  view.setUint32(at + 4, sector, true);
  view.setUint32(at + 8, volumeTag, true);
  let state = mix32(token ^ Math.imul(sector, 0x9e3779b1) ^ Math.imul(volumeTag, 0x85ebca77));
  for (let w = 3; w < WORDS; w++) {
    state = mix32(state + w);
    view.setUint32(at + w * 4, state, true);
  }
}

/** The bytes of a write of `token` over sectors [first, first + count). */
export function sectorsOf(token: number, first: number, count: number, volumeTag: number): Uint8Array {
  const bytes = new Uint8Array(count * SECTOR);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < count; i++) fillSector(view, i * SECTOR, token, first + i, volumeTag);
  return bytes;
}

/** What a sector read back is: a token, or a description of foreign/garbled content. */
export type SectorIdentity = { token: number } | { garbage: string };

const scratch = new DataView(new ArrayBuffer(SECTOR));

export function identifySector(
  bytes: Uint8Array,
  at: number,
  sector: number,
  volumeTag: number,
): SectorIdentity {
  const view = new DataView(bytes.buffer, bytes.byteOffset + at, SECTOR);
  const token = view.getUint32(0, true);
  let allZero = true;
  for (let w = 0; w < WORDS && allZero; w++) if (view.getUint32(w * 4, true) !== 0) allZero = false;
  if (allZero) return { token: 0 };
  const claimedSector = view.getUint32(4, true);
  const claimedTag = view.getUint32(8, true);
  if (claimedTag !== volumeTag) return { garbage: `bytes of volume tag ${claimedTag} (token ${token})` };
  if (claimedSector !== sector) return { garbage: `bytes of sector ${claimedSector} (token ${token})` };
  fillSector(scratch, 0, token, sector, volumeTag);
  for (let w = 0; w < WORDS; w++) {
    if (scratch.getUint32(w * 4, true) !== view.getUint32(w * 4, true))
      return { garbage: `torn or garbled sector claiming token ${token} (word ${w} differs)` };
  }
  return { token };
}
