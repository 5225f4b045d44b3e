import type { CheckReport, Job, JobSnapshot, Volume } from "@vdisk/sdk";
import { formatSize } from "./sizes.js";

/** Where and how a command prints: human text by default, one JSON document with `--json`. */
export interface Output {
  json: boolean;
  /** Writes to stdout. */
  out(text: string): void;
  /** Writes to stderr (diagnostics, hints; never part of the JSON document). */
  err(text: string): void;
}

export function consoleOutput(json: boolean): Output {
  return {
    json,
    out: (text) => void process.stdout.write(text),
    err: (text) => void process.stderr.write(text),
  };
}

/** Prints one JSON document (pretty, for people who read it too) followed by a newline. */
export function printJson(output: Output, value: unknown): void {
  output.out(`${JSON.stringify(value, null, 2)}\n`);
}

/** Prints one compact JSON line (for streams such as `job watch --json`). */
export function printJsonLine(output: Output, value: unknown): void {
  output.out(`${JSON.stringify(value)}\n`);
}

/** Left-aligned columns separated by two spaces, with a header row. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] as number)))
      .join("  ")
      .trimEnd();
  return `${[line(headers), ...rows.map(line)].join("\n")}\n`;
}

function labelsText(labels: Record<string, string>): string {
  return Object.entries(labels)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join(",");
}

export function volumeJson(v: Volume): Record<string, unknown> {
  return {
    name: v.name,
    uid: v.uid,
    format: v.format,
    state: v.state,
    capacityBytes: v.capacityBytes,
    allocationBytes: v.allocationBytes,
    physicalBytes: v.physicalBytes,
    backingVolume: v.backingVolume ?? null,
    chainDepth: v.chainDepth,
    clusterSize: v.clusterSize,
    preallocation: v.preallocation,
    labels: v.labels,
    createTime: v.createTime?.toISOString() ?? null,
    updateTime: v.updateTime?.toISOString() ?? null,
    qcow2: v.qcow2 ?? null,
    vmdk: v.vmdk ?? null,
    errorMessage: v.errorMessage ?? null,
  };
}

export function volumeTable(volumes: Volume[]): string {
  return table(
    ["NAME", "FORMAT", "STATE", "CAPACITY", "ALLOCATED", "PHYSICAL", "BACKING", "LABELS"],
    volumes.map((v) => [
      v.name,
      v.format,
      v.state,
      formatSize(v.capacityBytes),
      formatSize(v.allocationBytes),
      formatSize(v.physicalBytes),
      v.backingVolume ?? "-",
      labelsText(v.labels) || "-",
    ]),
  );
}

/** `key: value` lines describing one volume. */
export function volumeDetails(v: Volume): string {
  const rows: [string, string][] = [
    ["name", v.name],
    ["uid", v.uid],
    ["format", v.format],
    ["state", v.state],
    ["capacity", `${formatSize(v.capacityBytes)} (${v.capacityBytes} bytes)`],
    ["allocated", `${formatSize(v.allocationBytes)} (${v.allocationBytes} bytes)`],
    ["physical", `${formatSize(v.physicalBytes)} (${v.physicalBytes} bytes)`],
    ["preallocation", v.preallocation],
  ];
  if (v.clusterSize) rows.push(["cluster size", formatSize(v.clusterSize)]);
  if (v.backingVolume) rows.push(["backing", `${v.backingVolume} (chain depth ${v.chainDepth})`]);
  if (Object.keys(v.labels).length) rows.push(["labels", labelsText(v.labels)]);
  if (v.qcow2)
    rows.push([
      "qcow2",
      `compat ${v.qcow2.compat}, refcount bits ${v.qcow2.refcountBits}${v.qcow2.lazyRefcounts ? ", lazy refcounts" : ""}${v.qcow2.dirty ? ", dirty" : ""}${v.qcow2.corrupt ? ", CORRUPT" : ""}`,
    ]);
  if (v.vmdk) rows.push(["vmdk", `${v.vmdk.subformat}, cid ${v.vmdk.cid}`]);
  if (v.createTime) rows.push(["created", v.createTime.toISOString()]);
  if (v.errorMessage) rows.push(["error", v.errorMessage]);
  const width = Math.max(...rows.map(([k]) => k.length)) + 1;
  return rows.map(([k, value]) => `${`${k}:`.padEnd(width)} ${value}\n`).join("");
}

export function jobJson(job: Job): Record<string, unknown> {
  const e = job.error;
  return {
    id: job.id,
    kind: job.kind,
    volume: job.volume,
    state: job.state,
    progress: job.progress,
    createTime: job.createTime?.toISOString() ?? null,
    startTime: job.startTime?.toISOString() ?? null,
    endTime: job.endTime?.toISOString() ?? null,
    requestId: job.requestId ?? null,
    cancelRequested: job.cancelRequested,
    error: e ? { code: e.code, status: e.status, reason: e.reason ?? null, message: e.message } : null,
    result: job.result
      ? {
          volume: job.result.volume ? volumeJson(job.result.volume) : null,
          check: job.result.check ?? null,
          allocate: job.result.allocate ?? null,
        }
      : null,
  };
}

function percent(done: number, total: number): string {
  return total > 0 ? `${Math.floor((done / total) * 100)}%` : "-";
}

export function jobTable(jobs: Job[]): string {
  return table(
    ["ID", "KIND", "VOLUME", "STATE", "PROGRESS", "CREATED"],
    jobs.map((j) => [
      j.id,
      j.kind,
      j.volume,
      j.state,
      percent(j.progress.doneBytes, j.progress.totalBytes),
      j.createTime?.toISOString() ?? "-",
    ]),
  );
}

export function jobDetails(job: Job): string {
  const p = job.progress;
  const rows: [string, string][] = [
    ["id", job.id],
    ["kind", job.kind],
    ["volume", job.volume],
    ["state", job.state + (job.cancelRequested && job.state === "running" ? " (cancel requested)" : "")],
    [
      "progress",
      `${percent(p.doneBytes, p.totalBytes)} ${formatSize(p.doneBytes)}/${formatSize(p.totalBytes)}${p.phase ? ` (${p.phase})` : ""}`,
    ],
  ];
  if (job.createTime) rows.push(["created", job.createTime.toISOString()]);
  if (job.endTime) rows.push(["ended", job.endTime.toISOString()]);
  if (job.error)
    rows.push([
      "error",
      `${job.error.code}${job.error.reason ? ` (${job.error.reason})` : ""}: ${job.error.message}`,
    ]);
  const width = Math.max(...rows.map(([k]) => k.length)) + 1;
  return rows.map(([k, value]) => `${`${k}:`.padEnd(width)} ${value}\n`).join("");
}

/** One line per snapshot for `job watch` without a terminal. */
export function snapshotLine(s: JobSnapshot): string {
  return `${s.jobId} ${s.state} ${percent(s.doneBytes, s.totalBytes)} ${formatSize(s.doneBytes)}/${formatSize(s.totalBytes)}${s.phase ? ` ${s.phase}` : ""}\n`;
}

export function snapshotJson(s: JobSnapshot): Record<string, unknown> {
  return { ...s };
}

export function checkReportText(r: CheckReport): string {
  const lines = [...r.messages];
  if (r.corruptions === 0 && r.leaks === 0) lines.push("No errors were found on the image.");
  if (r.corruptions) lines.push(`${r.corruptions} errors were found on the image.`);
  if (r.leaks) lines.push(`${r.leaks} leaked clusters were found on the image.`);
  if (r.corruptionsFixed || r.leaksFixed)
    lines.push(`Repaired: ${r.corruptionsFixed} corruptions, ${r.leaksFixed} leaks.`);
  if (r.totalClusters)
    lines.push(
      `${r.allocatedClusters}/${r.totalClusters} clusters allocated, ${r.fragmentedClusters} fragmented, ${r.compressedClusters} compressed`,
    );
  if (r.imageEndOffset) lines.push(`Image end offset: ${r.imageEndOffset}`);
  return `${lines.join("\n")}\n`;
}
