import fs from "node:fs";
import path from "node:path";
import { EngineError } from "@vdisk/engine";
import Database from "libsql";
import type {
  Catalog,
  JobKind,
  JobQuery,
  JobRecord,
  VolumePatch,
  VolumeQuery,
  VolumeRecord,
  VolumeState,
} from "./catalog.js";

/**
 * Schema changes, applied in order and recorded in schema_migrations so an old catalog is upgraded in
 * place. Append only: never edit a migration that has shipped.
 */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE volumes (
     name TEXT PRIMARY KEY,
     uid TEXT NOT NULL UNIQUE,
     format TEXT NOT NULL,
     capacity INTEGER NOT NULL,
     state TEXT NOT NULL,
     backing_volume TEXT,
     cluster_size INTEGER NOT NULL,
     preallocation TEXT NOT NULL,
     options TEXT NOT NULL,
     labels TEXT NOT NULL,
     create_time INTEGER NOT NULL,
     update_time INTEGER NOT NULL,
     spec_hash TEXT NOT NULL,
     request_id TEXT,
     error_message TEXT
   ) STRICT;
   CREATE INDEX volumes_backing ON volumes(backing_volume);
   CREATE TABLE jobs (
     id TEXT PRIMARY KEY,
     kind TEXT NOT NULL,
     volume TEXT NOT NULL,
     state TEXT NOT NULL,
     done_bytes INTEGER NOT NULL,
     total_bytes INTEGER NOT NULL,
     phase TEXT NOT NULL,
     error_code TEXT,
     error_message TEXT,
     error_reason TEXT,
     error_metadata TEXT,
     bytes_per_second INTEGER NOT NULL DEFAULT 0,
     request_id TEXT UNIQUE,
     cancel_requested INTEGER NOT NULL DEFAULT 0,
     create_time INTEGER NOT NULL,
     start_time INTEGER,
     end_time INTEGER
   ) STRICT;
   CREATE INDEX jobs_volume ON jobs(volume, kind, create_time);
   CREATE INDEX jobs_created ON jobs(create_time, id);`,
  // DeleteVolume's request ids, so a retried delete gets its OK again instead of NOT_FOUND.
  `CREATE TABLE completed_deletes (
     request_id TEXT PRIMARY KEY,
     volume TEXT NOT NULL,
     delete_time INTEGER NOT NULL
   ) STRICT;
   CREATE INDEX completed_deletes_time ON completed_deletes(delete_time);`,
  // A succeeded job's outcome (a check report, an allocate summary), so GetJob and WatchJob still return it
  // after a restart or once the job has left the runner's memory.
  "ALTER TABLE jobs ADD COLUMN result TEXT;",
];

/** A job result larger than this as JSON is not stored (a check of a badly broken image lists many findings). */
const MAX_RESULT_JSON = 256 * 1024;

/**
 * How long a DeleteVolume's request id is remembered. Clients retry within seconds (the SDK gives up after
 * about 2 s of backoff); a day covers a control plane replaying its own log after an outage.
 */
export const DELETE_REQUEST_RETENTION_MS = 24 * 60 * 60 * 1000;

interface VolumeRow {
  name: string;
  uid: string;
  format: string;
  capacity: number;
  state: string;
  backing_volume: string | null;
  cluster_size: number;
  preallocation: string;
  options: string;
  labels: string;
  create_time: number;
  update_time: number;
  spec_hash: string;
  request_id: string | null;
  error_message: string | null;
}

interface JobRow {
  id: string;
  kind: string;
  volume: string;
  state: string;
  done_bytes: number;
  total_bytes: number;
  phase: string;
  error_code: string | null;
  error_message: string | null;
  error_reason: string | null;
  error_metadata: string | null;
  bytes_per_second: number;
  request_id: string | null;
  cancel_requested: number;
  create_time: number;
  start_time: number | null;
  end_time: number | null;
  result: string | null;
}

/** The embedded catalog: one SQLite file in WAL mode at POOL/.vdisk/catalog.db. */
export class SqliteCatalog implements Catalog {
  private readonly db: Database.Database;

  private constructor(db: Database.Database) {
    this.db = db;
  }

  /** Opens (creating if needed) the catalog file and brings its schema up to date. `":memory:"` for tests. */
  static open(file: string): SqliteCatalog {
    if (file !== ":memory:") fs.mkdirSync(path.dirname(file), { recursive: true });
    const db = new Database(file);
    // WAL: readers never block the writer, and a commit is one sequential append + fsync.
    db.pragma("journal_mode = WAL");
    // FULL: a committed job/volume state must survive power loss, since reconcile trusts it.
    db.pragma("synchronous = FULL");
    db.pragma("foreign_keys = ON");
    db.pragma("busy_timeout = 5000");
    const catalog = new SqliteCatalog(db);
    catalog.migrate();
    return catalog;
  }

  /** Applied schema version (number of migrations). */
  schemaVersion(): number {
    const row = this.db.prepare("SELECT MAX(version) AS v FROM schema_migrations").get() as {
      v: number | null;
    };
    return row.v ?? 0;
  }

  private migrate(): void {
    this.db.exec(
      "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_time INTEGER NOT NULL)",
    );
    const current = this.schemaVersion();
    if (current > MIGRATIONS.length) {
      throw new EngineError(
        "FAILED_PRECONDITION",
        `catalog schema version ${current} is newer than this server understands (${MIGRATIONS.length}); upgrade the server`,
        { reason: "CATALOG_TOO_NEW" },
      );
    }
    for (let v = current + 1; v <= MIGRATIONS.length; v++) {
      this.atomically(() => {
        this.db.exec(MIGRATIONS[v - 1] as string);
        this.db
          .prepare("INSERT INTO schema_migrations (version, applied_time) VALUES (?, ?)")
          .run(v, Date.now());
      });
    }
  }

  insertVolume(v: VolumeRecord): void {
    try {
      this.db
        .prepare(
          `INSERT INTO volumes (name, uid, format, capacity, state, backing_volume, cluster_size, preallocation, options, labels,
             create_time, update_time, spec_hash, request_id, error_message)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          v.name,
          v.uid,
          v.format,
          v.capacity,
          v.state,
          v.backingVolume ?? null,
          v.clusterSize,
          v.preallocation,
          JSON.stringify(v.options),
          JSON.stringify(v.labels),
          v.createTime,
          v.updateTime,
          v.specHash,
          v.requestId ?? null,
          v.errorMessage ?? null,
        );
    } catch (err) {
      throw uniqueViolation(storageFull(err), `volume "${v.name}" already exists`, "VOLUME_EXISTS");
    }
  }

  getVolume(name: string): VolumeRecord | undefined {
    const row = this.db.prepare("SELECT * FROM volumes WHERE name = ?").get(name) as VolumeRow | undefined;
    return row === undefined ? undefined : toVolume(row);
  }

  listVolumes(q: VolumeQuery): VolumeRecord[] {
    const where: string[] = [];
    const params: unknown[] = [];
    if (q.after !== undefined) {
      where.push("name > ?");
      params.push(q.after);
    }
    for (const [key, value] of Object.entries(q.labels ?? {})) {
      where.push(
        "EXISTS (SELECT 1 FROM json_each(volumes.labels) WHERE json_each.key = ? AND json_each.value = ?)",
      );
      params.push(key, value);
    }
    const sql = `SELECT * FROM volumes ${where.length > 0 ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY name LIMIT ?`;
    params.push(q.limit);
    return (this.db.prepare(sql).all(...params) as VolumeRow[]).map(toVolume);
  }

  updateVolume(name: string, patch: VolumePatch): VolumeRecord {
    const sets: string[] = ["update_time = ?"];
    const params: unknown[] = [Date.now()];
    const assign = (column: string, value: unknown) => {
      sets.push(`${column} = ?`);
      params.push(value);
    };
    if (patch.state !== undefined) assign("state", patch.state);
    if (patch.capacity !== undefined) assign("capacity", patch.capacity);
    if (patch.labels !== undefined) assign("labels", JSON.stringify(patch.labels));
    if (patch.errorMessage !== undefined) assign("error_message", patch.errorMessage);
    if (patch.backingVolume !== undefined) assign("backing_volume", patch.backingVolume);
    params.push(name);
    const result = this.write(() =>
      this.db.prepare(`UPDATE volumes SET ${sets.join(", ")} WHERE name = ?`).run(...params),
    );
    if (result.changes === 0)
      throw new EngineError("NOT_FOUND", `volume "${name}" not found`, { reason: "VOLUME_NOT_FOUND" });
    return this.getVolume(name) as VolumeRecord;
  }

  deleteVolume(name: string, requestId?: string): boolean {
    return this.write(() =>
      this.atomically(() => {
        const deleted = this.db.prepare("DELETE FROM volumes WHERE name = ?").run(name).changes > 0;
        if (deleted && requestId !== undefined) {
          const now = Date.now();
          this.db
            .prepare("DELETE FROM completed_deletes WHERE delete_time < ?")
            .run(now - DELETE_REQUEST_RETENTION_MS);
          this.db
            .prepare(
              "INSERT OR REPLACE INTO completed_deletes (request_id, volume, delete_time) VALUES (?, ?, ?)",
            )
            .run(requestId, name, now);
        }
        return deleted;
      }),
    );
  }

  completedDelete(requestId: string): { volume: string } | undefined {
    const row = this.db
      .prepare("SELECT volume FROM completed_deletes WHERE request_id = ? AND delete_time >= ?")
      .get(requestId, Date.now() - DELETE_REQUEST_RETENTION_MS) as { volume: string } | undefined;
    return row === undefined ? undefined : { volume: row.volume };
  }

  dependantsOf(name: string): string[] {
    return (
      this.db.prepare("SELECT name FROM volumes WHERE backing_volume = ? ORDER BY name").all(name) as {
        name: string;
      }[]
    ).map((r) => r.name);
  }

  saveJob(j: JobRecord): void {
    try {
      this.db
        .prepare(
          `INSERT INTO jobs (id, kind, volume, state, done_bytes, total_bytes, phase, error_code, error_message, error_reason,
             error_metadata, bytes_per_second, request_id, cancel_requested, create_time, start_time, end_time, result)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (id) DO UPDATE SET state = excluded.state, done_bytes = excluded.done_bytes,
             total_bytes = excluded.total_bytes, phase = excluded.phase, error_code = excluded.error_code,
             error_message = excluded.error_message, error_reason = excluded.error_reason,
             error_metadata = excluded.error_metadata, bytes_per_second = excluded.bytes_per_second,
             cancel_requested = excluded.cancel_requested, start_time = excluded.start_time, end_time = excluded.end_time,
             result = excluded.result`,
        )
        .run(
          j.id,
          j.kind,
          j.volume,
          j.state,
          j.progress.doneBytes,
          j.progress.totalBytes,
          j.progress.phase,
          j.error?.code ?? null,
          j.error?.message ?? null,
          j.error?.reason ?? null,
          j.error === undefined ? null : JSON.stringify(j.error.metadata),
          Math.round(j.progress.bytesPerSecond),
          j.requestId ?? null,
          j.cancelRequested ? 1 : 0,
          j.createTime.getTime(),
          j.startTime?.getTime() ?? null,
          j.endTime?.getTime() ?? null,
          resultJson(j.result),
        );
    } catch (err) {
      throw uniqueViolation(
        storageFull(err),
        `request id of job "${j.id}" is already used by another job`,
        "REQUEST_ID_REUSED",
      );
    }
  }

  getJob(id: string): JobRecord | undefined {
    const row = this.db.prepare("SELECT * FROM jobs WHERE id = ?").get(id) as JobRow | undefined;
    return row === undefined ? undefined : toJob(row);
  }

  findJobByRequestId(requestId: string): JobRecord | undefined {
    const row = this.db.prepare("SELECT * FROM jobs WHERE request_id = ?").get(requestId) as
      | JobRow
      | undefined;
    return row === undefined ? undefined : toJob(row);
  }

  latestJob(volume: string, kind: JobKind): JobRecord | undefined {
    const row = this.db
      .prepare("SELECT * FROM jobs WHERE volume = ? AND kind = ? ORDER BY create_time DESC, id DESC LIMIT 1")
      .get(volume, kind) as JobRow | undefined;
    return row === undefined ? undefined : toJob(row);
  }

  listJobs(q: JobQuery): JobRecord[] {
    const where: string[] = [];
    const params: unknown[] = [];
    if (q.volume !== undefined) {
      where.push("volume = ?");
      params.push(q.volume);
    }
    if (q.kind !== undefined) {
      where.push("kind = ?");
      params.push(q.kind);
    }
    if (q.states !== undefined && q.states.length > 0) {
      where.push(`state IN (${q.states.map(() => "?").join(", ")})`);
      params.push(...q.states);
    }
    if (q.before !== undefined) {
      where.push("(create_time < ? OR (create_time = ? AND id < ?))");
      params.push(q.before.createTime, q.before.createTime, q.before.id);
    }
    const sql = `SELECT * FROM jobs ${where.length > 0 ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY create_time DESC, id DESC LIMIT ?`;
    params.push(q.limit);
    return (this.db.prepare(sql).all(...params) as JobRow[]).map(toJob);
  }

  transaction<T>(fn: () => T): T {
    return this.write(() => this.atomically(fn));
  }

  /**
   * BEGIN … COMMIT, rolled back on error. Not libsql's transaction(): it always issues ROLLBACK, but SQLite
   * may already have rolled the transaction back by itself (SQLITE_FULL at COMMIT on a full disk does), and
   * the failing ROLLBACK ("no transaction is active") then replaces the error that matters.
   */
  private atomically<T>(fn: () => T): T {
    this.db.exec("BEGIN");
    try {
      const result = fn();
      this.db.exec("COMMIT");
      return result;
    } catch (err) {
      if (this.db.inTransaction) {
        try {
          this.db.exec("ROLLBACK");
        } catch {
          // The first error is the one to report.
        }
      }
      throw err;
    }
  }

  /** Runs a statement that writes, so a full disk surfaces as NO_SPACE rather than an unclassified error. */
  private write<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      throw storageFull(err);
    }
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

/**
 * SQLITE_FULL: the WAL (or the database file) could not grow because the pool's filesystem is full.
 * SQLite rolls the statement back, so the catalog is unchanged; the caller's operation simply did not
 * happen, which is what RESOURCE_EXHAUSTED tells the client.
 */
function storageFull(err: unknown): unknown {
  const code = (err as { code?: unknown }).code;
  const text = err instanceof Error ? err.message : "";
  if (code === "SQLITE_FULL" || /database or disk is full/.test(text)) {
    return new EngineError("NO_SPACE", "the pool's filesystem is full: the catalog could not be updated", {
      reason: "HOST_ENOSPC",
      metadata: { where: "catalog" },
      cause: err,
    });
  }
  return err;
}

function uniqueViolation(err: unknown, message: string, reason: string): unknown {
  const code = (err as { code?: unknown }).code;
  const text = err instanceof Error ? err.message : "";
  if (
    (typeof code === "string" && code.startsWith("SQLITE_CONSTRAINT")) ||
    /UNIQUE constraint failed/.test(text)
  ) {
    return new EngineError("ALREADY_EXISTS", message, { reason, cause: err });
  }
  return err;
}

/**
 * A job result as stored: plain JSON (results are records of numbers and strings), or null when there is
 * none, when it is not plain data, or when it is too large to keep.
 */
function resultJson(result: unknown): string | null {
  if (result === undefined || result === null) return null;
  try {
    const json = JSON.stringify(result);
    return json !== undefined && json.length <= MAX_RESULT_JSON ? json : null;
  } catch {
    return null;
  }
}

function toVolume(r: VolumeRow): VolumeRecord {
  return {
    name: r.name,
    uid: r.uid,
    format: r.format as VolumeRecord["format"],
    capacity: r.capacity,
    state: r.state as VolumeState,
    backingVolume: r.backing_volume ?? undefined,
    clusterSize: r.cluster_size,
    preallocation: r.preallocation as VolumeRecord["preallocation"],
    options: JSON.parse(r.options) as Record<string, unknown>,
    labels: JSON.parse(r.labels) as Record<string, string>,
    createTime: r.create_time,
    updateTime: r.update_time,
    specHash: r.spec_hash,
    requestId: r.request_id ?? undefined,
    errorMessage: r.error_message ?? undefined,
  };
}

function toJob(r: JobRow): JobRecord {
  const job: JobRecord = {
    id: r.id,
    kind: r.kind as JobRecord["kind"],
    volume: r.volume,
    state: r.state as JobRecord["state"],
    progress: {
      doneBytes: r.done_bytes,
      totalBytes: r.total_bytes,
      bytesPerSecond: r.bytes_per_second,
      etaSeconds: 0,
      phase: r.phase,
    },
    createTime: new Date(r.create_time),
    cancelRequested: r.cancel_requested !== 0,
  };
  if (r.start_time !== null) job.startTime = new Date(r.start_time);
  if (r.end_time !== null) job.endTime = new Date(r.end_time);
  if (r.request_id !== null) job.requestId = r.request_id;
  if (r.result !== null) job.result = JSON.parse(r.result) as unknown;
  if (r.error_code !== null) {
    job.error = {
      code: r.error_code as NonNullable<JobRecord["error"]>["code"],
      message: r.error_message ?? "",
      reason: r.error_reason ?? r.error_code,
      metadata: r.error_metadata === null ? {} : (JSON.parse(r.error_metadata) as Record<string, string>),
    };
  }
  return job;
}
