import { Code } from "@connectrpc/connect";
import { abortError, VdiskError } from "./errors.js";

/** How a call that failed with UNAVAILABLE (server restarting, connection dropped) is retried. */
export interface RetryPolicy {
  /** Total attempts, including the first (default 4; 1 disables retries). */
  maxAttempts: number;
  /** Delay before the first retry (default 100 ms); doubles each time. */
  initialDelayMs: number;
  /** Upper bound of the delay (default 2000 ms). */
  maxDelayMs: number;
}

/** @internal */
export const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 4, initialDelayMs: 100, maxDelayMs: 2000 };

/** Resolves after `ms`, or rejects with a canceled VdiskError when the signal aborts first. @internal */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError(signal));
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal as AbortSignal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Delay before retry number `retry` (1-based), exponential and capped. @internal */
export function backoffDelay(policy: RetryPolicy, retry: number): number {
  return Math.min(policy.maxDelayMs, policy.initialDelayMs * 2 ** (retry - 1));
}

/**
 * Runs `call` until it succeeds, fails with something other than UNAVAILABLE, or attempts run out.
 * The caller builds its request (and request id) once, outside `call`, so every attempt sends the same
 * request id and the server deduplicates: a retried create never creates twice.
 * @internal
 */
export async function retryUnavailable<T>(
  call: () => Promise<T>,
  policy: RetryPolicy,
  signal?: AbortSignal,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (err) {
      const error = VdiskError.from(err);
      if (error.status !== Code.Unavailable || attempt >= policy.maxAttempts || signal?.aborted) throw error;
      await sleep(backoffDelay(policy, attempt), signal);
    }
  }
}
