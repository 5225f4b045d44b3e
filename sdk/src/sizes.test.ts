import { createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { createVdiskClient } from "./client.js";
import { VolumeFormat } from "./gen/vdisk/v1/common_pb.js";
import { VolumeService } from "./gen/vdisk/v1/volume_pb.js";
import { VolumeState } from "./gen/vdisk/v1/volume_types_pb.js";
import { fromUint64, GiB, TiB, toUint32, toUint64 } from "./sizes.js";

describe("size conversions", () => {
  it("accepts every safe integer and rejects the rest with RangeError", () => {
    expect(toUint64(0, "x")).toBe(0n);
    expect(toUint64(TiB, "x")).toBe(1099511627776n);
    expect(toUint64(Number.MAX_SAFE_INTEGER, "x")).toBe(9007199254740991n);
    expect(() => toUint64(2 ** 53, "capacityBytes")).toThrow(RangeError);
    expect(() => toUint64(-1, "x")).toThrow(RangeError);
    expect(() => toUint64(1.5, "x")).toThrow(RangeError);
    expect(() => toUint64(Number.NaN, "x")).toThrow(RangeError);
    expect(() => toUint32(2 ** 32, "x")).toThrow(RangeError);
  });

  it("converts server values to numbers, refusing those above 2^53-1", () => {
    expect(fromUint64(512n * BigInt(GiB), "x")).toBe(512 * GiB);
    expect(fromUint64(9007199254740991n, "x")).toBe(Number.MAX_SAFE_INTEGER);
    expect(() => fromUint64(9007199254740992n, "capacity_bytes")).toThrow(/capacity_bytes/);
  });

  it("rejects an oversized request before anything is sent", () => {
    let calls = 0;
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        // biome-ignore lint/correctness/useYield: counts calls only; the test expects none
        async *createVolume() {
          calls++;
        },
      });
    });
    const client = createVdiskClient({ transport });
    expect(() => client.createVolume({ name: "big", format: "raw", capacityBytes: 2 ** 53 })).toThrow(
      RangeError,
    );
    expect(() => client.resizeVolume("big", -5)).toThrow(RangeError);
    expect(calls).toBe(0);
  });

  it("returns volume sizes as numbers and enums as strings", async () => {
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        getVolume: (req) => ({
          volume: {
            name: req.name,
            format: VolumeFormat.QCOW2,
            capacityBytes: BigInt(TiB),
            allocationBytes: 65536n,
            physicalBytes: 196608n,
            state: VolumeState.READY,
            clusterSize: 65536,
          },
        }),
      });
    });
    const volume = await createVdiskClient({ transport }).getVolume("disk1");
    expect(volume).toMatchObject({
      name: "disk1",
      format: "qcow2",
      capacityBytes: TiB,
      allocationBytes: 65536,
      physicalBytes: 196608,
      state: "ready",
      preallocation: "off",
    });
    expect(volume.backingVolume).toBeUndefined();
  });

  it("fails a read whose sizes do not fit in a number with RangeError", async () => {
    const transport = createRouterTransport(({ service }) => {
      service(VolumeService, {
        getVolume: (req) => ({ volume: { name: req.name, capacityBytes: 2n ** 60n } }),
      });
    });
    await expect(createVdiskClient({ transport }).getVolume("huge")).rejects.toThrow(RangeError);
  });
});
