import { createRequire } from "node:module";

/**
 * Lets a serializer hand grpc-js a message that is already a complete gRPC frame (the 5-byte prefix
 * included), which grpc-js then writes as it is.
 *
 * Why: grpc-js frames every outgoing message by copying it into a fresh `Buffer.allocUnsafe(length + 5)`.
 * For ReadVolume's 1 MiB chunks that is a copy of every byte served plus 1 MiB of new external memory per
 * message, which V8 only gives back at a full mark-compact; in a CPU profile of the server during
 * downloads, that copy and the garbage collection it drives were 35 % of the main thread (0.85 s + 1.1 s
 * of 5.6 s for 2.1 GiB). The copy has no purpose for a message built in its own buffer.
 *
 * How: grpc-js offers no hook for this, so `BaseServerInterceptingCall.prototype.serializeMessage` is
 * replaced by one that returns buffers registered with `markFramed` unchanged and frames everything else
 * exactly as grpc-js does. Only done for the grpc-js versions whose method is known to be exactly that
 * (checked by version and by the method's own text); otherwise nothing is patched, `installed` stays
 * false and callers keep serializing unframed messages.
 *
 * A framed buffer belongs to grpc-js until the write of its message completes (the callback of
 * `call.write`, called once HTTP/2 has passed the bytes to the socket); only then may it be reused.
 */

interface SerializingCall {
  handler: { serialize(value: unknown): Buffer };
}

interface PatchableCallClass {
  prototype: { serializeMessage?: (this: SerializingCall, value: unknown) => Buffer };
}

/** grpc-js versions whose serializeMessage was read and is reproduced below. */
const KNOWN_VERSIONS = /^1\.1[0-4]\./;
/** The statements that identify grpc-js's framing, as its compiled serializeMessage contains them. */
const FRAMING_FINGERPRINT = [
  "Buffer.allocUnsafe(byteLength + 5)",
  "writeUInt32BE(byteLength, 1)",
  "copy(output, 5)",
];

export const FRAME_PREFIX_BYTES = 5;

const framedBuffers = new WeakSet<Buffer>();
let installed = false;

/** Whether framed buffers pass through (install() succeeded). */
export function preframedSendInstalled(): boolean {
  return installed;
}

/**
 * Writes the gRPC prefix (uncompressed, length) into the first 5 bytes of `frame`, whose rest is the
 * message, and registers it to pass through serialization unchanged.
 */
export function markFramed(frame: Buffer): Buffer {
  frame[0] = 0;
  frame.writeUInt32BE(frame.length - FRAME_PREFIX_BYTES, 1);
  framedBuffers.add(frame);
  return frame;
}

/** Installs the pass-through once per process. Returns whether it is in place. */
export function installPreframedSend(): boolean {
  if (installed) return true;
  const require = createRequire(import.meta.url);
  let callClass: PatchableCallClass | undefined;
  try {
    const version = (require("@grpc/grpc-js/package.json") as { version?: string }).version ?? "";
    if (!KNOWN_VERSIONS.test(version)) return false;
    callClass = (
      require("@grpc/grpc-js/build/src/server-interceptors.js") as {
        BaseServerInterceptingCall?: PatchableCallClass;
      }
    ).BaseServerInterceptingCall;
  } catch {
    return false;
  }
  const original = callClass?.prototype.serializeMessage;
  if (callClass === undefined || typeof original !== "function") return false;
  const text = original.toString();
  if (!FRAMING_FINGERPRINT.every((statement) => text.includes(statement))) return false;
  callClass.prototype.serializeMessage = function serializeMessage(value: unknown): Buffer {
    const serialized = this.handler.serialize(value);
    if (framedBuffers.has(serialized)) return serialized;
    const output = Buffer.allocUnsafe(serialized.byteLength + FRAME_PREFIX_BYTES);
    output[0] = 0;
    output.writeUInt32BE(serialized.byteLength, 1);
    output.set(serialized, FRAME_PREFIX_BYTES);
    return output;
  };
  installed = true;
  return true;
}
