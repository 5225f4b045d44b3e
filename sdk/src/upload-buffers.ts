/** Free buffers kept for reuse; beyond this, returned buffers are left to the GC. */
const MAX_FREE = 16;

interface Loan {
  buffer: Buffer;
  /** Bytes of it handed to the connection and not yet written out. */
  outstanding: number;
  /** More views of it may still be handed out. */
  open: boolean;
}

/**
 * The read buffers of one upload, reused once every byte taken from them has been written to the socket.
 * A fresh 1 MiB buffer per file read is external memory V8 only frees at a full mark-compact, which it
 * then runs every few dozen MiB: over a second of client CPU per GiB. Views are matched to their buffer by
 * the ArrayBuffer they share (allocUnsafeSlow gives each buffer its own). @internal
 */
export class UploadBuffers {
  private readonly free: Buffer[] = [];
  private readonly loans = new Map<ArrayBufferLike, Loan>();

  constructor(private readonly size: number) {}

  /** A buffer to read into. */
  take(): Buffer {
    const buffer = this.free.pop() ?? Buffer.allocUnsafeSlow(this.size);
    this.loans.set(buffer.buffer, { buffer, outstanding: 0, open: true });
    return buffer;
  }

  /** `view` (part of a taken buffer) is about to be sent. */
  lend(view: Uint8Array): void {
    const loan = this.loans.get(view.buffer);
    if (loan !== undefined) loan.outstanding += view.length;
  }

  /** `view`, lent before, has been written out. */
  returned(view: Uint8Array): void {
    const loan = this.loans.get(view.buffer);
    if (loan === undefined) return;
    loan.outstanding -= view.length;
    this.release(loan);
  }

  /** No more views of `view`'s buffer will be lent. */
  done(view: Uint8Array): void {
    const loan = this.loans.get(view.buffer);
    if (loan === undefined) return;
    loan.open = false;
    this.release(loan);
  }

  private release(loan: Loan): void {
    if (loan.open || loan.outstanding > 0) return;
    this.loans.delete(loan.buffer.buffer);
    if (this.free.length < MAX_FREE) this.free.push(loan.buffer);
  }
}
