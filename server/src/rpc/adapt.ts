import { once } from "node:events";
import { addAbortSignal } from "node:stream";
import {
  type handleClientStreamingCall,
  type handleServerStreamingCall,
  type handleUnaryCall,
  type Metadata,
  type ServerReadableStream,
  type ServerUnaryCall,
  status,
} from "@grpc/grpc-js";
import { EngineError } from "@vdisk/engine";
import type { Logger } from "../log.js";
import { toGrpcStatus, toWireError } from "./errors.js";

const DEADLINE_TOLERANCE_MS = 10;

/** What every handler gets besides its request: one signal for "stop now", whatever the reason. */
export interface CallContext {
  /** Aborts on client cancel, on the call's deadline, and on server shutdown. The reason is an EngineError. */
  readonly signal: AbortSignal;
  readonly metadata: Metadata;
  readonly method: string;
  readonly log: Logger;
}

export interface AdapterEnv {
  log: Logger;
  /** Fires when the server begins shutting down: running calls stop at their next safe point. */
  shutdown: AbortSignal;
}

export type UnaryImpl<Req, Res> = (request: Req, ctx: CallContext) => Promise<Res>;
export type ServerStreamImpl<Req, Res> = (request: Req, ctx: CallContext) => AsyncIterable<Res>;
export type ClientStreamImpl<Req, Res> = (requests: AsyncIterable<Req>, ctx: CallContext) => Promise<Res>;

/** The part of every grpc-js server call the scope needs (the call classes share no common event typing). */
type AnyCall = Pick<ServerUnaryCall<unknown, unknown>, "getDeadline" | "metadata"> & NodeJS.EventEmitter;

interface CallScope {
  ctx: CallContext;
  /** Removes the timers and listeners the scope installed. Call exactly once when the call is over. */
  dispose(): void;
}

/**
 * Builds the per-call AbortSignal. grpc-js emits 'cancelled' on client cancel and also at the end of
 * every call (grpc/grpc-node#2771); both mean "nobody is listening any more", so aborting is right either way.
 */
function openScope(env: AdapterEnv, method: string, call: AnyCall): CallScope {
  const controller = new AbortController();
  const abort = (reason: EngineError) => {
    if (!controller.signal.aborted) controller.abort(reason);
  };
  const deadline = call.getDeadline();
  const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
  const deadlineExceeded = () =>
    abort(new EngineError("DEADLINE_EXCEEDED", "the call's deadline was exceeded", { reason: "DEADLINE" }));

  // grpc-js enforces deadlines itself and reports them as 'cancelled' too; whichever timer fires first,
  // a call past its deadline is DEADLINE_EXCEEDED, not a client cancel.
  const onCancelled = () => {
    // Timers may fire a few ms before Date.now() reaches the deadline, hence the small tolerance.
    if (Date.now() >= deadlineMs - DEADLINE_TOLERANCE_MS) deadlineExceeded();
    else
      abort(
        new EngineError("CANCELLED", "the call was cancelled by the client", { reason: "CLIENT_CANCELLED" }),
      );
  };
  call.on("cancelled", onCancelled);

  const onShutdown = () =>
    abort(new EngineError("CANCELLED", "the server is shutting down", { reason: "SERVER_SHUTDOWN" }));
  if (env.shutdown.aborted) onShutdown();
  else env.shutdown.addEventListener("abort", onShutdown, { once: true });

  let timer: NodeJS.Timeout | undefined;
  if (Number.isFinite(deadlineMs)) {
    // setTimeout clamps delays above 2^31-1 ms to 1 ms, so far-away deadlines are simply not armed.
    const delay = Math.max(0, deadlineMs - Date.now());
    if (delay < 2 ** 31 - 1) {
      timer = setTimeout(deadlineExceeded, delay);
      timer.unref();
    }
  }

  const log = env.log.child({ rpc: method });
  return {
    ctx: { signal: controller.signal, metadata: call.metadata, method, log },
    dispose() {
      if (timer !== undefined) clearTimeout(timer);
      env.shutdown.removeEventListener("abort", onShutdown);
      call.removeListener("cancelled", onCancelled);
    },
  };
}

function logFailure(ctx: CallContext, err: unknown): void {
  const wire = toWireError(err);
  if (wire.hidden) ctx.log.error({ err }, "call failed with an internal error");
  else if (wire.code === status.CANCELLED || wire.code === status.DEADLINE_EXCEEDED)
    ctx.log.debug({ code: status[wire.code] }, "call ended early");
  else ctx.log.debug({ code: status[wire.code], reason: wire.reason, message: wire.message }, "call failed");
}

export function unary<Req, Res>(
  env: AdapterEnv,
  method: string,
  impl: UnaryImpl<Req, Res>,
): handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const scope = openScope(env, method, call as AnyCall);
    // Promise.resolve().then: a handler that throws synchronously is caught like one that rejects.
    Promise.resolve()
      .then(() => impl(call.request, scope.ctx))
      .then(
        (res) => callback(null, res),
        (err: unknown) => {
          logFailure(scope.ctx, err);
          callback(toGrpcStatus(err));
        },
      )
      .finally(() => scope.dispose());
  };
}

export function serverStream<Req, Res>(
  env: AdapterEnv,
  method: string,
  impl: ServerStreamImpl<Req, Res>,
  opts: {
    /** Called once a message has been written out (not for messages dropped by a cancelled call). */
    afterWrite?: (message: Res) => void;
  } = {},
): handleServerStreamingCall<Req, Res> {
  const { afterWrite } = opts;
  return (call) => {
    const scope = openScope(env, method, call as AnyCall);
    const { signal } = scope.ctx;
    (async () => {
      for await (const message of impl(call.request, scope.ctx)) {
        if (signal.aborted) break;
        const written = afterWrite === undefined ? undefined : () => afterWrite(message);
        // write() false = the HTTP/2 stream and grpc-js buffers are full: wait for 'drain' rather than
        // queueing unboundedly (grpc-node#1332). The signal ends the wait if the client goes away.
        if (!call.write(message, written)) await once(call, "drain", { signal });
      }
      // A stream cut short (shutdown, deadline) must not end with OK: the client would take a partial
      // read or map for a complete one. Throwing sends the abort reason as the status.
      if (signal.aborted) throw signal.reason;
      call.end();
    })()
      .catch((err: unknown) => {
        if (call.cancelled) return; // nobody to tell
        logFailure(scope.ctx, err);
        call.emit("error", toGrpcStatus(signal.aborted && isAbortError(err) ? signal.reason : err));
      })
      .finally(() => scope.dispose());
  };
}

export function clientStream<Req, Res>(
  env: AdapterEnv,
  method: string,
  impl: ClientStreamImpl<Req, Res>,
): handleClientStreamingCall<Req, Res> {
  return (call, callback) => {
    const scope = openScope(env, method, call as AnyCall);
    const { signal } = scope.ctx;
    // Destroying the readable on abort makes a pending `for await` reject instead of waiting forever.
    addAbortSignal(signal, call);
    const requests = consume<Req>(call, signal);
    Promise.resolve()
      .then(() => impl(requests, scope.ctx))
      .then(
        (res) => callback(null, res),
        (err: unknown) => {
          const reason = signal.aborted && isAbortError(err) ? signal.reason : err;
          logFailure(scope.ctx, reason);
          callback(toGrpcStatus(reason));
        },
      )
      .finally(() => scope.dispose());
  };
}

/**
 * Async iteration over the request stream. Readable pulls from grpc-js only when its small object buffer
 * (highWaterMark 16 messages) has room, so a fast client is held back by HTTP/2 flow control, not memory.
 */
async function* consume<Req>(
  call: ServerReadableStream<Req, unknown>,
  signal: AbortSignal,
): AsyncGenerator<Req> {
  try {
    for await (const message of call) yield message as Req;
  } catch (err) {
    if (signal.aborted) throw signal.reason;
    throw err;
  }
}

function isAbortError(err: unknown): boolean {
  return (
    (err instanceof Error && err.name === "AbortError") ||
    (err instanceof EngineError && (err.code === "CANCELLED" || err.code === "DEADLINE_EXCEEDED"))
  );
}

/** A server stream that fails at once with `error` (for RPCs that are refused before producing anything). */
// biome-ignore lint/correctness/useYield: the generator exists only to fail the stream with a status.
export async function* failingStream(error: Error): AsyncGenerator<never> {
  throw error;
}
