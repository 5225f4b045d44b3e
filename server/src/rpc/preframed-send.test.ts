import {
  type Client,
  credentials,
  makeGenericClientConstructor,
  Server,
  ServerCredentials,
  type ServiceDefinition,
} from "@grpc/grpc-js";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serverStream } from "./adapt.js";
import {
  FRAME_PREFIX_BYTES,
  installPreframedSend,
  markFramed,
  preframedSendInstalled,
} from "./preframed-send.js";

const MESSAGES = 48;
const MESSAGE_BYTES = 256 * 1024;
/** Fewer buffers than messages in flight: each is reused as soon as the write of its message completes. */
const POOL = 2;

/** Message i's content: recognisable, so a buffer reused too early shows up as the wrong bytes. */
function content(i: number, into: Buffer): void {
  into.fill((i * 37 + 11) & 0xff);
  for (let at = 0; at + 4 <= into.length; at += 4096) into.writeUInt32BE(i, at);
}

interface Framed {
  index: number;
  frame: Buffer;
}

const free: Buffer[] = [];
let allocated = 0;
function takeFrame(): Buffer {
  const frame = free.pop();
  if (frame !== undefined) return frame;
  allocated++;
  return Buffer.alloc(FRAME_PREFIX_BYTES + MESSAGE_BYTES);
}

const identity = (b: Buffer) => b;
const definition = {
  Framed: {
    path: "/preframed.Test/Framed",
    requestStream: false,
    responseStream: true,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: (m: Framed) => markFramed(m.frame),
    responseDeserialize: identity,
  },
  Plain: {
    path: "/preframed.Test/Plain",
    requestStream: false,
    responseStream: true,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
} as unknown as ServiceDefinition;

let server: Server;
let client: Client & Record<string, (...args: unknown[]) => NodeJS.EventEmitter>;

beforeAll(async () => {
  expect(installPreframedSend()).toBe(true);
  const env = { log: pino({ level: "silent" }), shutdown: new AbortController().signal };
  server = new Server();
  server.addService(definition, {
    Framed: serverStream(
      env,
      "Framed",
      async function* () {
        for (let index = 0; index < MESSAGES; index++) {
          // Waits for a buffer when all are still being written: the pool is as small as it says.
          while (free.length === 0 && allocated >= POOL) await new Promise((r) => setImmediate(r));
          const frame = takeFrame();
          content(index, frame.subarray(FRAME_PREFIX_BYTES));
          yield { index, frame };
        }
      },
      { afterWrite: (m: Framed) => free.push(m.frame) },
    ),
    Plain: serverStream(env, "Plain", async function* () {
      yield Buffer.from("unframed one");
      yield Buffer.alloc(0);
      yield Buffer.from("unframed two");
    }),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  const Ctor = makeGenericClientConstructor(definition, "Test");
  client = new Ctor(`127.0.0.1:${port}`, credentials.createInsecure()) as typeof client;
});

afterAll(() => {
  client?.close();
  server?.forceShutdown();
});

function collect(methodName: string): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    const call = client[methodName]?.(Buffer.alloc(0));
    if (call === undefined) throw new Error(`no method ${methodName}`);
    call.on("data", (b: Buffer) => got.push(b));
    call.on("error", reject);
    call.on("end", () => resolve(got));
  });
}

describe("framed messages pass through grpc-js", () => {
  it("is installed for the grpc-js version in use (an upgrade that changes its framing fails here)", () => {
    expect(preframedSendInstalled()).toBe(true);
    expect(installPreframedSend()).toBe(true);
  });

  it("delivers every framed message intact although its buffer is reused once its write completes", async () => {
    // A slow reader holds the server back on HTTP/2 flow control, so writes complete long after they start.
    const got = await collect("Framed");
    expect(got).toHaveLength(MESSAGES);
    const expected = Buffer.alloc(MESSAGE_BYTES);
    for (let i = 0; i < MESSAGES; i++) {
      content(i, expected);
      expect(got[i]?.equals(expected), `message ${i}`).toBe(true);
    }
    expect(allocated).toBe(POOL);
  });

  it("frames everything else as grpc-js does", async () => {
    const got = await collect("Plain");
    expect(got.map((b) => b.toString())).toEqual(["unframed one", "", "unframed two"]);
  });
});
