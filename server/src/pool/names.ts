import { EngineError } from "@vdisk/engine";

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/**
 * Volume names are identifiers, never paths: they become one file name inside the pool directory, so
 * "/" and ".." must be impossible and the first character can't be "." (no hidden or relative names).
 */
export function validateVolumeName(name: string, field = "name"): string {
  if (name.length === 0) throw invalidName(field, `${field} is required`);
  if (name.length > 128)
    throw invalidName(field, `${field} must be at most 128 characters; got ${name.length}`);
  if (name.includes("/")) throw invalidName(field, `${field} must not contain "/"`);
  if (name.includes("..")) throw invalidName(field, `${field} must not contain ".."`);
  if (!NAME_PATTERN.test(name)) {
    throw invalidName(field, `${field} must use only A-Z a-z 0-9 . _ - and start with a letter or digit`);
  }
  return name;
}

function invalidName(field: string, message: string): EngineError {
  return new EngineError("INVALID_ARGUMENT", message, { reason: "INVALID_VOLUME_NAME", metadata: { field } });
}
