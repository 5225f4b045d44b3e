import { setMaxListeners } from "node:events";
import type { Http2Server, Http2Session } from "node:http2";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Server } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { driverFor, openHostFile } from "@vdisk/engine";
import { SqliteCatalog } from "./catalog/sqlite-catalog.js";
import { parseListen, type ServerConfig } from "./config.js";
import { JobRunner } from "./jobs/job-runner.js";
import { VolumeLocks } from "./jobs/volume-locks.js";
import type { Logger } from "./log.js";
import { Pool } from "./pool/pool.js";
import { reconcile } from "./pool/reconcile.js";
import { drainGrpcServer } from "./rpc/graceful-shutdown.js";
import { installPreframedSend } from "./rpc/preframed-send.js";
import { serverCredentials } from "./security/credentials.js";
import { poolWritable } from "./security/pool-health.js";
import { bearerTokenInterceptor, loadTokens } from "./security/token-auth.js";
import { AllocationService } from "./services/allocation-service.js";
import { type ServiceContext, StreamAdmission } from "./services/context.js";
import { DataService } from "./services/data-service.js";
import { ServerHealth } from "./services/health.js";
import { JobService } from "./services/job-service.js";
import { VolumeService } from "./services/volume-service.js";
import { type EngineDeps, ImageRegistry } from "./volumes/image-registry.js";

const MIB = 1024 * 1024;

/** The services served, by full name, for health reporting. */
export const SERVICE_NAMES = [
  "vdisk.v1.VolumeService",
  "vdisk.v1.AllocationService",
  "vdisk.v1.DataService",
  "vdisk.v1.JobService",
] as const;

/**
 * grpc-js limits, all explicit (DESIGN §7 rule 9). Data messages are ≤ 4 MiB of payload, so 8 MiB leaves
 * room for framing without letting a client make the server buffer arbitrarily large messages.
 */
export const GRPC_OPTIONS = {
  "grpc.max_receive_message_length": 8 * MIB,
  "grpc.max_send_message_length": 8 * MIB,
  "grpc.max_concurrent_streams": 128,
  "grpc.keepalive_time_ms": 60_000,
  "grpc.keepalive_timeout_ms": 20_000,
  "grpc.keepalive_permit_without_calls": 0,
  "grpc.max_connection_idle_ms": 15 * 60_000,
  // Node's own default (10 MB) refuses new streams once large windows are buffered; grpc-js's default
  // (unlimited) lets one client exhaust memory. 256 MiB per connection bounds it well above our windows.
  "grpc-node.max_session_memory": 256,
} as const;

/** HTTP/2 receive windows for the server side (reference/performance.md §4: 4–6× throughput on uploads). */
export const STREAM_WINDOW_BYTES = 8 * MIB;
export const CONNECTION_WINDOW_BYTES = 32 * MIB;

export interface StartServerOptions {
  config: Pick<ServerConfig, "listen" | "pool" | "maxCapacity" | "reflection" | "maxJobs"> &
    Partial<Pick<ServerConfig, "tlsCert" | "tlsKey" | "tlsClientCa" | "tokenFile">>;
  log: Logger;
  /** Engine pieces; defaults to the real host file and the engine's format registry. */
  engine?: EngineDeps;
  /** How long close() lets calls and jobs finish before forcing (ms). */
  shutdownTimeoutMs?: number;
  /** How often the pool is probed for writability; health turns NOT_SERVING while it is not (ms). */
  poolProbeMs?: number;
}

export interface RunningServer {
  /** The bound port (useful with port 0). */
  port: number;
  address: string;
  /** Drains and stops: health NOT_SERVING, calls and jobs stopped, images flushed and closed, catalog closed. */
  close(): Promise<void>;
}

export function defaultEngine(): EngineDeps {
  return { openHostFile, driverFor };
}

export async function startServer(options: StartServerOptions): Promise<RunningServer> {
  const { config, log } = options;
  const engine = options.engine ?? defaultEngine();
  const shutdownTimeoutMs = options.shutdownTimeoutMs ?? 10_000;

  // Read before anything is opened: a missing certificate or token file fails the start, not the first call.
  const credentials = serverCredentials(config);
  const tokens = config.tokenFile === undefined ? undefined : loadTokens(config.tokenFile);

  const pool = new Pool(config.pool);
  await pool.init();
  const catalog = SqliteCatalog.open(pool.catalogPath);
  try {
    await reconcile(catalog, pool, log);
  } catch (err) {
    catalog.close();
    throw err;
  }

  const shutdown = new AbortController();
  // Every call in flight listens for shutdown (and removes its listener when done), so hundreds of listeners
  // are normal here; Node's default of 10 would print a false memory-leak warning under load.
  setMaxListeners(0, shutdown.signal);
  const images = new ImageRegistry(catalog, pool, engine);
  const locks = new VolumeLocks();
  const health = new ServerHealth(catalog, SERVICE_NAMES);
  const jobs = new JobRunner({
    store: catalog,
    locks,
    maxRunning: config.maxJobs,
    onPersistError: (err, job) =>
      log.error({ err, job: job.id, kind: job.kind, state: job.state }, "could not record a job's progress"),
    // A failure's message is kept server-side too: for INTERNAL it is all an operator gets (clients see a
    // generic text).
    onJobEnd: (job) =>
      log[job.error?.code === "INTERNAL" ? "error" : "info"](
        {
          job: job.id,
          kind: job.kind,
          volume: job.volume,
          state: job.state,
          reason: job.error?.reason,
          ...(job.error === undefined ? {} : { error: job.error.message }),
        },
        "job ended",
      ),
  });
  const ctx: ServiceContext = {
    catalog,
    pool,
    images,
    jobs,
    engine,
    locks,
    admission: new StreamAdmission(),
    adapter: { log, shutdown: shutdown.signal },
    log,
    maxCapacity: config.maxCapacity,
    health,
  };

  // ReadVolume's chunks are built as complete gRPC frames; this lets grpc-js send them without a copy.
  installPreframedSend();
  const server = new Server({
    ...GRPC_OPTIONS,
    ...(tokens === undefined ? {} : { interceptors: [bearerTokenInterceptor(tokens)] }),
  });
  new VolumeService(ctx).addToServer(server);
  new AllocationService(ctx).addToServer(server);
  new DataService(ctx).addToServer(server);
  new JobService(ctx).addToServer(server);

  health.addToServer(server);

  if (config.reflection) new ReflectionService(loadContract()).addToServer(server);

  const { host, port: requestedPort } = parseListen(config.listen);
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${host}:${requestedPort}`, credentials, (err, bound) =>
      err ? reject(err) : resolve(bound),
    );
  }).catch((err: unknown) => {
    catalog.close();
    throw err;
  });
  const windows = widenFlowControlWindows(server);
  if (!windows)
    log.warn(
      "could not set server HTTP/2 flow-control windows (grpc-js internals changed); uploads will be slower",
    );

  let draining = false;
  let poolOk = true;
  const probePool = async () => {
    const ok = await poolWritable(pool.root);
    if (draining || ok === poolOk) return;
    poolOk = ok;
    if (ok) log.info({ pool: pool.root }, "pool is writable again; serving");
    else log.error({ pool: pool.root }, "pool is not writable; health NOT_SERVING");
    health.setServing(ok);
  };
  const poolTimer = setInterval(() => void probePool(), options.poolProbeMs ?? 10_000);
  poolTimer.unref();

  const address = `${host}:${port}`;
  log.info(
    {
      address,
      port,
      pool: pool.root,
      reflection: config.reflection,
      tls: config.tlsCert === undefined ? "off" : config.tlsClientCa === undefined ? "tls" : "mtls",
      tokenAuth: tokens !== undefined,
    },
    `vdisk server listening on ${address}`,
  );

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      log.info("draining");
      draining = true;
      clearInterval(poolTimer);
      health.setServing(false);
      shutdown.abort();
      await jobs.shutdown(shutdownTimeoutMs);
      if ((await drainGrpcServer(server, shutdownTimeoutMs)) === "forced")
        log.warn("calls did not finish in time; forcing shutdown");
      await images.closeAll().catch((err: unknown) => log.error({ err }, "closing images failed"));
      catalog.close();
      log.info("stopped");
    })();
    return closing;
  };
  return { port, address, close };
}

/** The vdisk.v1 contract as descriptors, for server reflection. Read from proto/ at the repository root. */
function loadContract() {
  const protoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../proto");
  const files = ["volume", "allocation", "data", "job"].map((f) => `vdisk/v1/${f}.proto`);
  return loadSync(files, {
    includeDirs: [protoRoot],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
}

/**
 * grpc-js's server applies no HTTP/2 window options (grpc-node PR #3058 is still open), so Node's 64 KiB
 * defaults would cap client-streaming uploads at ~200 MB/s. Node's public http2 API can fix it:
 * Http2Server.updateSettings({initialWindowSize}) for every stream of new sessions, and
 * session.setLocalWindowSize() on each 'session' (the documented place since nodejs/node#51071). The only
 * non-public part is reaching grpc-js's http2 servers (its private `http2Servers` map); the shape is
 * checked, and a false return lets the caller warn instead of failing.
 */
function widenFlowControlWindows(server: Server): boolean {
  const servers = (server as unknown as { http2Servers?: unknown }).http2Servers;
  if (!(servers instanceof Map)) return false;
  let applied = false;
  for (const candidate of servers.keys()) {
    const h2 = candidate as Partial<Http2Server>;
    if (typeof h2.updateSettings !== "function" || typeof h2.on !== "function") continue;
    h2.updateSettings({ initialWindowSize: STREAM_WINDOW_BYTES });
    h2.on("session", (session: Http2Session) => {
      const widen = () => {
        try {
          session.setLocalWindowSize(CONNECTION_WINDOW_BYTES);
        } catch {
          // The session closed before it connected; nothing to widen.
        }
      };
      if (session.connecting) session.once("connect", widen);
      else widen();
    });
    applied = true;
  }
  return applied;
}
