import { EngineError, type EngineErrorCode } from "../../errors.js";

/** Image-derived text in messages is capped and escaped so a hostile file can't flood or forge log lines. */
export function quoteImageText(text: string, max = 64): string {
  return JSON.stringify(text.length > max ? `${text.slice(0, max)}…` : text);
}

export function vmdkError(code: EngineErrorCode, reason: string, message: string): EngineError {
  return new EngineError(code, `vmdk: ${message}`, { reason });
}

export const corrupt = (reason: string, message: string): EngineError =>
  vmdkError("CORRUPT", reason, message);
export const unsupported = (reason: string, message: string): EngineError =>
  vmdkError("UNSUPPORTED", reason, message);
export const invalidArgument = (reason: string, message: string): EngineError =>
  vmdkError("INVALID_ARGUMENT", reason, message);
