import { EngineError } from "@vdisk/engine";
import { describe, expect, it } from "vitest";
import { validateVolumeName } from "./names.js";

describe("validateVolumeName", () => {
  it.each(["a", "disk-1", "Disk_1.img", "0abc", "a".repeat(128), "a.b.c"])("accepts %j", (name) => {
    expect(validateVolumeName(name)).toBe(name);
  });

  it.each([
    ["", "required"],
    ["a".repeat(129), "at most 128"],
    ["a/b", '"/"'],
    ["../x", '"/"'],
    ["a..b", '".."'],
    [".hidden", "start with a letter or digit"],
    ["-x", "start with a letter or digit"],
    ["a b", "only"],
    ["é", "only"],
    ["a\u0000", "only"],
  ])("rejects %j", (name, message) => {
    let caught: unknown;
    try {
      validateVolumeName(name);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(EngineError);
    const e = caught as EngineError;
    expect(e.code).toBe("INVALID_ARGUMENT");
    expect(e.reason).toBe("INVALID_VOLUME_NAME");
    expect(e.message).toContain(message);
  });
});
