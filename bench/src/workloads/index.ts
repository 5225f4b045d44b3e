import { copyWorkloads } from "./copy.js";
import { createWorkloads } from "./create.js";
import { mapWorkload } from "./map.js";
import { type PeerCache, smallIoWorkloads } from "./small-io.js";
import { streamWorkloads } from "./streams.js";
import type { Workload } from "./types.js";

/** Every workload of issue 8, in the order they run. */
export function allWorkloads(peerCache: () => PeerCache): Workload[] {
  return [
    ...createWorkloads,
    ...copyWorkloads,
    mapWorkload,
    ...smallIoWorkloads(peerCache),
    ...streamWorkloads,
  ];
}

/** Workloads named (exactly or by prefix) in `only`; all when `only` is undefined. */
export function selectWorkloads(all: readonly Workload[], only: readonly string[] | undefined): Workload[] {
  if (only === undefined) return [...all];
  const unknown = only.filter((o) => !all.some((w) => w.name === o || w.name.startsWith(o)));
  if (unknown.length > 0) {
    throw new Error(
      `unknown workload(s): ${unknown.join(", ")}; known: ${all.map((w) => w.name).join(", ")}`,
    );
  }
  return all.filter((w) => only.some((o) => w.name === o || w.name.startsWith(o)));
}
