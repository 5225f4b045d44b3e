import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import {
  type CallOptions,
  type ClientReadableStream,
  credentials,
  Metadata,
  type ServiceError,
} from "@grpc/grpc-js";
import { pino } from "pino";
import { expect } from "vitest";
import { AllocationServiceClient } from "../gen/vdisk/v1/allocation.js";
import { Preallocation, VolumeFormat } from "../gen/vdisk/v1/common.js";
import { DataServiceClient } from "../gen/vdisk/v1/data.js";
import { type JobEvent, JobServiceClient } from "../gen/vdisk/v1/job.js";
import { type CreateVolumeRequest, VolumeServiceClient } from "../gen/vdisk/v1/volume.js";
import { errorInfoOf } from "../rpc/errors.js";
import { type RunningServer, startServer } from "../server.js";
import type { EngineDeps } from "../volumes/image-registry.js";

/** A real server on 127.0.0.1:0 over a temporary pool, plus plain grpc-js clients from the generated code. */
export interface Harness {
  server: RunningServer;
  pool: string;
  volumes: VolumeServiceClient;
  data: DataServiceClient;
  allocation: AllocationServiceClient;
  jobs: JobServiceClient;
  stop(): Promise<void>;
}

export const MAX_CAPACITY = 1024 ** 3;

export async function startHarness(setup: { engine?: EngineDeps } = {}): Promise<Harness> {
  const pool = fs.mkdtempSync(path.join(os.tmpdir(), "vdisk-e2e-"));
  const server = await startServer({
    config: { listen: "127.0.0.1:0", pool, maxCapacity: MAX_CAPACITY, reflection: true, maxJobs: 2 },
    log: pino({ level: process.env.VDISK_TEST_LOG ?? "silent" }),
    shutdownTimeoutMs: 2000,
    ...(setup.engine === undefined ? {} : { engine: setup.engine }),
  });
  const target = `127.0.0.1:${server.port}`;
  const creds = credentials.createInsecure();
  const options = { "grpc.max_receive_message_length": 8 * 1024 * 1024 };
  const volumes = new VolumeServiceClient(target, creds, options);
  const data = new DataServiceClient(target, creds, options);
  const allocation = new AllocationServiceClient(target, creds, options);
  const jobs = new JobServiceClient(target, creds, options);
  return {
    server,
    pool,
    volumes,
    data,
    allocation,
    jobs,
    async stop() {
      for (const c of [volumes, data, allocation, jobs]) c.close();
      await server.close();
      fs.rmSync(pool, { recursive: true, force: true });
    },
  };
}

/** Calls a generated unary method as a promise. */
export function call<Req, Res>(
  client: object,
  // The generated methods are overloaded; inference uses the last overload, (req, metadata, options, callback).
  method: (
    req: Req,
    metadata: Metadata,
    options: Partial<CallOptions>,
    cb: (err: ServiceError | null, res: Res) => void,
  ) => unknown,
  req: Req,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(client, req, new Metadata(), {}, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

export async function collect<T>(stream: ClientReadableStream<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const message of stream) out.push(message as T);
  return out;
}

export function createRequest(
  name: string,
  overrides: Partial<CreateVolumeRequest> = {},
): CreateVolumeRequest {
  return {
    name,
    format: VolumeFormat.VOLUME_FORMAT_RAW,
    capacityBytes: 1024n * 1024n,
    preallocation: Preallocation.PREALLOCATION_OFF,
    allocationBytes: undefined,
    backingVolume: "",
    clusterSize: 0,
    qcow2: undefined,
    vmdk: undefined,
    labels: {},
    requestId: "",
    cancelOnDisconnect: false,
    ...overrides,
  };
}

export async function createVolume(
  h: Harness,
  name: string,
  overrides: Partial<CreateVolumeRequest> = {},
): Promise<JobEvent[]> {
  return collect(h.volumes.createVolume(createRequest(name, overrides)));
}

/** Asserts that `promise` fails with gRPC `code` and, if given, ErrorInfo `reason` in grpc-status-details-bin. */
export async function expectStatus(
  promise: Promise<unknown>,
  code: number,
  reason?: string,
): Promise<ServiceError> {
  let caught: unknown;
  try {
    await promise;
  } catch (err) {
    caught = err;
  }
  expect(caught, "the call should have failed").toBeDefined();
  const err = caught as ServiceError;
  expect({ code: err.code, details: err.details }).toMatchObject({ code });
  const [bin] = err.metadata.get("grpc-status-details-bin");
  expect(bin, "grpc-status-details-bin trailer").toBeInstanceOf(Buffer);
  const { status, info } = errorInfoOf(bin as Buffer);
  expect(status.code).toBe(code);
  expect(info?.domain).toBe("vdisk.dev");
  if (reason !== undefined) expect(info?.reason).toBe(reason);
  return err;
}

/** A grpc.health.v1 client for the harness's server (the health proto shipped with grpc-health-check). */
export async function healthClient(h: Harness) {
  const grpc = await import("@grpc/grpc-js");
  const loader = await import("@grpc/proto-loader");
  const { protoPath } = await import("grpc-health-check");
  const def = loader.loadSync(protoPath, { keepCase: true, enums: String });
  // biome-ignore lint/suspicious/noExplicitAny: a dynamically loaded service constructor.
  const pkg = grpc.loadPackageDefinition(def) as any;
  const client = new pkg.grpc.health.v1.Health(`127.0.0.1:${h.server.port}`, credentials.createInsecure());
  return {
    client,
    /** Health/Check's status for `service`, or "NOT_FOUND" when the server knows no such service. */
    check(service: string): Promise<string> {
      return new Promise((resolve, reject) =>
        client.check({ service }, (err: ServiceError | null, r: { status: string }) => {
          if (err?.code === 5) resolve("NOT_FOUND");
          else if (err) reject(err);
          else resolve(r.status);
        }),
      );
    },
    close: () => client.close(),
  };
}
