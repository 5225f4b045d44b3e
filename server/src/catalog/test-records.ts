import type { JobRecord, VolumeRecord } from "./catalog.js";

/** Complete records with plain defaults, for catalog and reconcile tests. */
export function volumeRecord(name: string, overrides: Partial<VolumeRecord> = {}): VolumeRecord {
  return {
    name,
    uid: `uid-${name}`,
    format: "raw",
    capacity: 1 << 20,
    state: "READY",
    backingVolume: undefined,
    clusterSize: 0,
    preallocation: "off",
    options: {},
    labels: {},
    createTime: 1000,
    updateTime: 1000,
    specHash: "h",
    requestId: undefined,
    errorMessage: undefined,
    ...overrides,
  };
}

export function jobRecord(id: string, overrides: Partial<JobRecord> = {}): JobRecord {
  return {
    id,
    kind: "CREATE_VOLUME",
    volume: "v",
    state: "QUEUED",
    progress: { doneBytes: 0, totalBytes: 100, bytesPerSecond: 0, etaSeconds: 0, phase: "" },
    cancelRequested: false,
    createTime: new Date(1000),
    ...overrides,
  };
}
