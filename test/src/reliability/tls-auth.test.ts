import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { type ChannelCredentials, Client as GrpcClient, credentials as grpcCredentials } from "@grpc/grpc-js";
import { createVdiskClient, MiB, type TlsOptions, type VdiskClient, VdiskError } from "@vdisk/sdk";
import { createLogger, type RunningServer, startServer } from "@vdisk/server";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/**
 * TLS with a private CA, mutual TLS (client certificates required and checked against that CA only) and
 * bearer tokens (every RPC but health). Certificates are made with openssl in a temp dir.
 */
const run = promisify(execFile);
let dir: string;
const pem: Record<string, Buffer> = {};

async function openssl(args: string[]): Promise<void> {
  await run("openssl", args, { cwd: dir });
}

async function makeCa(name: string): Promise<void> {
  await openssl([
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.pem`,
    "-days",
    "2",
    "-subj",
    `/CN=${name}`,
  ]);
}

/** A certificate for `name` issued by `ca`; negative days make one that has already expired. */
async function issue(name: string, ca: string, days: number, ext?: string): Promise<void> {
  await openssl([
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.csr`,
    "-subj",
    `/CN=${name}`,
  ]);
  const extArgs = ext === undefined ? [] : ["-extfile", `${name}.ext`];
  if (ext !== undefined) await writeFile(join(dir, `${name}.ext`), ext);
  await openssl([
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    `${ca}.pem`,
    "-CAkey",
    `${ca}.key`,
    "-set_serial",
    String(Date.now()),
    "-days",
    String(days),
    "-out",
    `${name}.pem`,
    ...extArgs,
  ]);
}

const servers: RunningServer[] = [];
const clients: VdiskClient[] = [];

async function serve(extra: Record<string, string>): Promise<RunningServer> {
  const poolDir = await mkdtemp(join(dir, "pool-"));
  const server = await startServer({
    config: {
      listen: "127.0.0.1:0",
      pool: poolDir,
      maxCapacity: 64 * MiB,
      reflection: false,
      maxJobs: 1,
      ...extra,
    },
    log: createLogger("silent", { pretty: false }),
  });
  servers.push(server);
  return server;
}

function connect(server: RunningServer, tls?: TlsOptions, token?: string): VdiskClient {
  const client = createVdiskClient({
    baseUrl: `${tls === undefined ? "http" : "https"}://127.0.0.1:${server.port}`,
    ...(tls === undefined ? {} : { tls }),
    ...(token === undefined ? {} : { token }),
    timeoutMs: 5000,
    retry: { maxAttempts: 1 },
  });
  clients.push(client);
  return client;
}

/** A call that reaches a handler answers NOT_FOUND for a missing volume; anything else never got that far. */
async function outcome(client: VdiskClient): Promise<string> {
  const err = await client.getVolume("missing").then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(VdiskError);
  return (err as VdiskError).code;
}

/**
 * The same for the two data calls, which the SDK makes on its own HTTP/2 connections (sdk/src/wire): both
 * must carry the TLS material and the token exactly as the other calls do.
 */
async function dataOutcomes(client: VdiskClient): Promise<string[]> {
  const codeOf = (e: unknown) => {
    expect(e).toBeInstanceOf(VdiskError);
    return (e as VdiskError).code;
  };
  const read = await (async () => {
    for await (const _piece of client.readVolume("missing")) return "ok";
    return "ok";
  })().then(() => "ok", codeOf);
  const write = await client
    .writeVolume("missing", [{ offset: 0, data: Buffer.alloc(16) }])
    .then(() => "ok", codeOf);
  return [read, write];
}

/** grpc.health.v1.Health/Check for the overall service, with hand-encoded messages (status 1 = SERVING). */
function healthCheck(port: number, creds: ChannelCredentials): Promise<number> {
  const client = new GrpcClient(`127.0.0.1:${port}`, creds);
  return new Promise<number>((resolve, reject) => {
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      () => Buffer.alloc(0),
      (b: Buffer) => b,
      {},
      (err, reply) => {
        client.close();
        if (err) reject(err);
        else
          resolve(reply !== undefined && reply.length === 2 && reply[0] === 0x08 ? (reply[1] as number) : -1);
      },
    );
  });
}

beforeAll(async () => {
  await mkdir("/tmp/sec", { recursive: true });
  dir = await mkdtemp("/tmp/sec/tls-");
  await run("openssl", ["version"]);
  await makeCa("ca");
  await makeCa("other-ca");
  await issue("server", "ca", 2, "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  await issue("client", "ca", 2);
  await issue("stranger", "other-ca", 2);
  await issue("expired", "ca", -1);
  for (const name of ["ca", "server", "client", "stranger", "expired"]) {
    pem[`${name}.pem`] = await readFile(join(dir, `${name}.pem`));
    pem[`${name}.key`] = await readFile(join(dir, `${name}.key`));
  }
  await writeFile(join(dir, "tokens"), "# operators\nfirst-token\n\nsecond-token\n");
});

afterAll(async () => {
  for (const c of clients) c.close();
  for (const s of servers) await s.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("mutual TLS with a private CA", () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await serve({
      tlsCert: join(dir, "server.pem"),
      tlsKey: join(dir, "server.key"),
      tlsClientCa: join(dir, "ca.pem"),
    });
  });
  const ca = () => pem["ca.pem"] as Buffer;

  it("serves a client with a certificate from the CA", async () => {
    const client = connect(server, { ca: ca(), cert: pem["client.pem"], key: pem["client.key"] });
    expect(await outcome(client)).toBe("not_found");
    expect(await dataOutcomes(client)).toEqual(["not_found", "not_found"]);
  });

  it("rejects, in the handshake, clients without a certificate, from another CA, or expired", async () => {
    const cases: TlsOptions[] = [
      { ca: ca() },
      { ca: ca(), cert: pem["stranger.pem"], key: pem["stranger.key"] },
      { ca: ca(), cert: pem["expired.pem"], key: pem["expired.key"] },
    ];
    for (const tls of cases) {
      const code = await outcome(connect(server, tls));
      expect(code).not.toBe("not_found");
      // Under TLS 1.3 the client finishes its side first, so the refusal may arrive as a reset stream (canceled).
      expect(["unavailable", "internal", "unknown", "aborted", "canceled"]).toContain(code);
    }
  });

  it("refuses plaintext clients", async () => {
    expect(await outcome(connect(server))).not.toBe("not_found");
    for (const code of await dataOutcomes(connect(server))) expect(code).not.toBe("not_found");
    const stranger = connect(server, { ca: ca(), cert: pem["stranger.pem"], key: pem["stranger.key"] });
    for (const code of await dataOutcomes(stranger)) expect(["not_found", "ok"]).not.toContain(code);
  });
});

describe("bearer tokens", () => {
  let server: RunningServer;
  beforeAll(async () => {
    server = await serve({
      tlsCert: join(dir, "server.pem"),
      tlsKey: join(dir, "server.key"),
      tokenFile: join(dir, "tokens"),
    });
  });
  const tls = () => ({ ca: pem["ca.pem"] as Buffer });

  it("answers UNAUTHENTICATED without a token or with a wrong one", async () => {
    expect(await outcome(connect(server, tls()))).toBe("unauthenticated");
    expect(await outcome(connect(server, tls(), "second-tokenX"))).toBe("unauthenticated");
    expect(await dataOutcomes(connect(server, tls()))).toEqual(["unauthenticated", "unauthenticated"]);
    expect(await dataOutcomes(connect(server, tls(), "second-tokenX"))).toEqual([
      "unauthenticated",
      "unauthenticated",
    ]);
    expect(await outcome(connect(server, tls(), "# operators"))).toBe("unauthenticated");
  });

  it("serves any listed token", async () => {
    expect(await outcome(connect(server, tls(), "first-token"))).toBe("not_found");
    expect(await outcome(connect(server, tls(), "second-token"))).toBe("not_found");
    expect(await dataOutcomes(connect(server, tls(), "first-token"))).toEqual(["not_found", "not_found"]);
  });

  it("keeps health reachable without a token", async () => {
    const creds = grpcCredentials.createSsl(pem["ca.pem"] as Buffer);
    expect(await healthCheck(server.port, creds)).toBe(1);
  });
});
