import type { WireChannel } from "./channel.js";

/** The hand-made data channels of a client made from a baseUrl (none for a client given a transport). */
export interface WireChannels {
  /** Downloads (ReadVolume), on their own connection. */
  downloads: WireChannel;
  /** Uploads (WriteVolume), on their own connection: see the client constructor for why. */
  uploads: WireChannel;
}

// Kept outside the client class so the wire path adds nothing to the public type.
const channels = new WeakMap<object, WireChannels>();

/** @internal */
export function setWireChannels(client: object, value: WireChannels): void {
  channels.set(client, value);
}

/** @internal */
export function wireChannelsOf(client: object): WireChannels | undefined {
  return channels.get(client);
}
