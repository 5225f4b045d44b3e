import { describe, expect, it } from "vitest";
import { WriteWindow } from "./write-window.js";

/** A write that finishes when the test says so, recording when it started. */
function controlledWrite(log: string[], name: string) {
  let finish!: () => void;
  let fail!: (error: Error) => void;
  const done = new Promise<void>((resolve, reject) => {
    finish = resolve;
    fail = reject;
  });
  return {
    write: () => {
      log.push(`start ${name}`);
      return done;
    },
    finish,
    fail,
  };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe("WriteWindow", () => {
  it("runs disjoint writes together, up to its depth", async () => {
    const log: string[] = [];
    const window = new WriteWindow(2);
    const a = controlledWrite(log, "a");
    const b = controlledWrite(log, "b");
    const c = controlledWrite(log, "c");
    await window.add(0, 10, a.write);
    await window.add(10, 10, b.write);
    const third = window.add(20, 10, c.write);
    await tick();
    expect(log).toEqual(["start a", "start b"]);
    a.finish();
    await third;
    expect(log).toEqual(["start a", "start b", "start c"]);
    b.finish();
    c.finish();
    await window.drain();
  });

  it("starts a write that overlaps a running one only after it", async () => {
    const log: string[] = [];
    const window = new WriteWindow(8);
    const first = controlledWrite(log, "first");
    const overlapping = controlledWrite(log, "overlapping");
    await window.add(0, 100, first.write);
    const second = window.add(99, 10, overlapping.write);
    await tick();
    expect(log).toEqual(["start first"]);
    first.finish();
    await second;
    expect(log).toEqual(["start first", "start overlapping"]);
    overlapping.finish();
    await window.drain();
  });

  it("reports the first failure from the next call, after running writes finish", async () => {
    const log: string[] = [];
    const window = new WriteWindow(4);
    const a = controlledWrite(log, "a");
    const b = controlledWrite(log, "b");
    await window.add(0, 1, a.write);
    await window.add(1, 1, b.write);
    a.fail(new Error("disk full"));
    await tick();
    await expect(window.add(2, 1, async () => undefined)).rejects.toThrow("disk full");
    let drained = false;
    const drain = window.drain().finally(() => {
      drained = true;
    });
    drain.catch(() => undefined);
    await tick();
    expect(drained).toBe(false);
    b.finish();
    await expect(drain).rejects.toThrow("disk full");
    await window.settle();
  });
});
