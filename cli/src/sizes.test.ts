import { describe, expect, it } from "vitest";
import { formatSize, parseSize } from "./sizes.js";

describe("parseSize", () => {
  it("reads plain byte counts and binary units in every spelling", () => {
    expect(parseSize("4096")).toBe(4096);
    expect(parseSize("0")).toBe(0);
    expect(parseSize("512M")).toBe(512 * 1024 ** 2);
    expect(parseSize("10G")).toBe(10 * 1024 ** 3);
    expect(parseSize("10g")).toBe(10 * 1024 ** 3);
    expect(parseSize("1TiB")).toBe(1024 ** 4);
    expect(parseSize("1TB")).toBe(1024 ** 4);
    expect(parseSize("64KiB")).toBe(65536);
    expect(parseSize("1.5G")).toBe(1.5 * 1024 ** 3);
    expect(parseSize(" 2 M ")).toBe(2 * 1024 ** 2);
  });

  it("rejects what is not a size, fractions of a byte and values above 2^53-1", () => {
    for (const bad of ["", "abc", "-1", "10X", "1.5", "0.3K", "1e3", "10 GB extra"])
      expect(() => parseSize(bad), bad).toThrow(RangeError);
    expect(() => parseSize("8E")).toThrow(/too large/);
    expect(() => parseSize("0.5")).toThrow(/whole number/);
  });
});

describe("formatSize", () => {
  it("prints bytes below 1 KiB and binary units above, with few decimals", () => {
    expect(formatSize(0)).toBe("0 B");
    expect(formatSize(1023)).toBe("1023 B");
    expect(formatSize(1024)).toBe("1 KiB");
    expect(formatSize(1536)).toBe("1.5 KiB");
    expect(formatSize(8 * 1024 ** 3)).toBe("8 GiB");
    expect(formatSize(1024 ** 4)).toBe("1 TiB");
    expect(formatSize(123.4 * 1024 ** 2)).toBe("123 MiB");
    expect(formatSize(12.34 * 1024 ** 2)).toBe("12.3 MiB");
  });

  it("round-trips through parseSize for whole units", () => {
    for (const text of ["1 KiB", "512 MiB", "10 GiB", "1 TiB"])
      expect(formatSize(parseSize(text.replace(" ", "")))).toBe(text);
  });
});
