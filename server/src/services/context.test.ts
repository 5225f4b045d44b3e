import { EngineError } from "@vdisk/engine";
import { describe, expect, it } from "vitest";
import { StreamAdmission } from "./context.js";

describe("StreamAdmission", () => {
  it("limits streams per volume and in total, and releases once", () => {
    const admission = new StreamAdmission(2, 3);
    const a1 = admission.admit("a");
    admission.admit("a");
    expect(() => admission.admit("a")).toThrow(/on volume "a"/);
    admission.admit("b");
    let caught: unknown;
    try {
      admission.admit("c");
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(EngineError);
    expect((caught as EngineError).code).toBe("NO_SPACE");
    expect((caught as EngineError).reason).toBe("TOO_MANY_STREAMS");
    a1();
    a1();
    const again = admission.admit("a");
    expect(() => admission.admit("c")).toThrow(/limit 3/);
    again();
    admission.admit("c");
  });
});
