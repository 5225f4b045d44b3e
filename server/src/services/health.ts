import {
  status as grpcStatus,
  type Server,
  type ServerUnaryCall,
  type ServerWritableStream,
  type sendUnaryData,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";
import { HealthImplementation, type ServingStatus } from "grpc-health-check";
import type { Catalog } from "../catalog/catalog.js";

/** Health service name of one volume: `vdisk.v1.Volume/<volume name>`. */
export const VOLUME_HEALTH_PREFIX = "vdisk.v1.Volume/";

/** What health needs of the catalog: the state of a volume by name. */
type VolumeStates = Pick<Catalog, "getVolume">;

type HealthRequest = { service: string };
type CheckHandler = (call: ServerUnaryCall<HealthRequest, unknown>, callback: sendUnaryData<unknown>) => void;
type WatchHandler = (call: ServerWritableStream<HealthRequest, unknown>) => void;

/**
 * grpc.health.v1.Health with two kinds of names (reliability.md §d item 10, docs/operations.md "Health"):
 *
 * - `""` and each `vdisk.v1.*Service` — readiness of the server: SERVING unless it drains or the pool is
 *   not writable. One volume in ERROR does not change them: every other volume is still served.
 * - `vdisk.v1.Volume/<name>` — one volume: SERVING while it is READY and the server serves; NOT_SERVING
 *   while it is ERROR (an fsync failed or corruption was found; it stays so until an operator acts),
 *   CREATING or DELETING, or while the server does not serve; NOT_FOUND for no such volume.
 *
 * Volume names are answered from the catalog at each Check rather than registered up front, so health
 * needs no bookkeeping per volume and List stays the short list of services. A Watch on a volume name
 * gets the current status, then every change the server reports through volumeChanged/setServing.
 */
export class ServerHealth {
  private readonly impl: HealthImplementation;
  private serving = true;
  /** Volume names someone watches: only these are pushed to the implementation's status map. */
  private readonly watchedVolumes = new Set<string>();

  constructor(
    private readonly volumes: VolumeStates,
    private readonly serviceNames: readonly string[],
  ) {
    const initial: Record<string, ServingStatus> = { "": "SERVING" };
    for (const name of serviceNames) initial[name] = "SERVING";
    this.impl = new HealthImplementation(initial);
  }

  /** Readiness of the whole server (drain, pool probe); volumes follow it. */
  setServing(serving: boolean): void {
    this.serving = serving;
    const status: ServingStatus = serving ? "SERVING" : "NOT_SERVING";
    for (const name of ["", ...this.serviceNames]) this.impl.setStatus(name, status);
    for (const volume of this.watchedVolumes) this.volumeChanged(volume);
  }

  /** Call after a volume's state changed, so watchers of its health name hear of it. */
  volumeChanged(volume: string): void {
    if (!this.watchedVolumes.has(volume)) return;
    this.impl.setStatus(VOLUME_HEALTH_PREFIX + volume, this.volumeStatus(volume) ?? "NOT_SERVING");
  }

  /** The status of `vdisk.v1.Volume/<volume>`, or undefined if there is no such volume. */
  volumeStatus(volume: string): ServingStatus | undefined {
    const record = this.volumes.getVolume(volume);
    if (record === undefined) return undefined;
    return this.serving && record.state === "READY" ? "SERVING" : "NOT_SERVING";
  }

  addToServer(server: Server): void {
    // The library's handlers answer the fixed names; calls on volume names are answered here first.
    const intercepting = {
      addService: (definition: unknown, handlers: UntypedServiceImplementation) => {
        server.addService(definition as Parameters<Server["addService"]>[0], {
          ...handlers,
          check: ((call, callback) => {
            const volume = volumeOf(call.request.service);
            if (volume === undefined) return (handlers.check as CheckHandler)(call, callback);
            const status = this.volumeStatus(volume);
            if (status === undefined) {
              callback({
                code: grpcStatus.NOT_FOUND,
                details: `Health status unknown for service ${call.request.service}`,
              });
            } else {
              callback(null, { status });
            }
          }) satisfies CheckHandler,
          watch: ((call) => {
            const volume = volumeOf(call.request.service);
            const status = volume === undefined ? undefined : this.volumeStatus(volume);
            if (volume !== undefined && status !== undefined) {
              this.watchedVolumes.add(volume);
              this.impl.setStatus(call.request.service, status);
            }
            (handlers.watch as WatchHandler)(call);
          }) satisfies WatchHandler,
        });
      },
    };
    this.impl.addToServer(intercepting as unknown as Server);
  }
}

function volumeOf(service: string): string | undefined {
  return service.startsWith(VOLUME_HEALTH_PREFIX) ? service.slice(VOLUME_HEALTH_PREFIX.length) : undefined;
}
