import { EngineError } from "@vdisk/engine";

/** Who holds a volume: a job (exclusive) or data streams (shared). */
export type LockMode = "exclusive" | "shared";

interface Holder {
  mode: LockMode;
  owners: Set<string>;
}

/**
 * In-process per-volume locks. A job that changes a volume's layout (resize, allocate, flatten, check
 * repair, create) takes it exclusively; data streams (read/write/map) share it. A conflicting request
 * fails at once with FAILED_PRECONDITION (reason VOLUME_BUSY) rather than queueing: a control plane
 * that sees "busy" can decide to wait on the other job (WatchJob), which a silent queue would hide.
 * Cross-process exclusion (QEMU, other vdisk servers) is the job of the image's OFD locks.
 */
export class VolumeLocks {
  readonly #held = new Map<string, Holder>();

  /** Takes the lock or throws VOLUME_BUSY. Returns the release function (idempotent). */
  acquire(volume: string, mode: LockMode, owner: string): () => void {
    const holder = this.#held.get(volume);
    if (holder && (mode === "exclusive" || holder.mode === "exclusive")) {
      throw new EngineError(
        "FAILED_PRECONDITION",
        `volume ${volume} is busy (${holder.mode === "exclusive" ? "a job holds it" : "data streams are open"})`,
        {
          reason: "VOLUME_BUSY",
          metadata: { volume },
        },
      );
    }
    if (holder) holder.owners.add(owner);
    else this.#held.set(volume, { mode, owners: new Set([owner]) });
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const h = this.#held.get(volume);
      if (!h) return;
      h.owners.delete(owner);
      if (h.owners.size === 0) this.#held.delete(volume);
    };
  }

  /** Current holder mode, if any. */
  heldAs(volume: string): LockMode | undefined {
    return this.#held.get(volume)?.mode;
  }
}
