import { expect, it } from "vitest";
import { UploadBuffers } from "./upload-buffers.js";

it("reuses a buffer only after it is closed and every lent view is back", () => {
  const buffers = new UploadBuffers(1024);
  const first = buffers.take();
  const a = first.subarray(0, 100);
  const b = first.subarray(200, 1024);
  buffers.lend(a);
  buffers.lend(b);
  buffers.done(first);
  buffers.returned(a);
  const second = buffers.take();
  expect(second.buffer).not.toBe(first.buffer);
  buffers.returned(b);
  const third = buffers.take();
  expect(third.buffer).toBe(first.buffer);
  // Views of buffers it never handed out are ignored.
  buffers.returned(Buffer.alloc(10));
  buffers.done(Buffer.alloc(10));
});
