import type { Server } from "@grpc/grpc-js";
import { EngineError } from "@vdisk/engine";
import type { JobRecord, JobState } from "../catalog/catalog.js";
import {
  type CancelJobRequest,
  type CancelJobResponse,
  type GetJobRequest,
  type GetJobResponse,
  type JobEvent,
  JobKind,
  type JobServiceServer,
  JobServiceService,
  type ListJobsRequest,
  type ListJobsResponse,
  type WatchJobRequest,
} from "../gen/vdisk/v1/job.js";
import { type CallContext, serverStream, unary } from "../rpc/adapt.js";
import { jobKindFromWire, jobStateFromWire } from "../rpc/convert.js";
import type { ServiceContext } from "./context.js";
import { jobEvent, jobMessage } from "./volume-messages.js";

const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 1000;

export class JobService {
  constructor(private readonly ctx: ServiceContext) {}

  addToServer(server: Pick<Server, "addService">): void {
    const env = this.ctx.adapter;
    const impl: JobServiceServer = {
      getJob: unary(env, "GetJob", (req: GetJobRequest) => this.getJob(req)),
      listJobs: unary(env, "ListJobs", async (req: ListJobsRequest) => this.listJobs(req)),
      watchJob: serverStream(env, "WatchJob", (req: WatchJobRequest, call) => this.watchJob(req, call)),
      cancelJob: unary(env, "CancelJob", async (req: CancelJobRequest) => this.cancelJob(req)),
    };
    server.addService(JobServiceService, impl);
  }

  /** With the outcome of a succeeded job (as WatchJob gives it); ListJobs leaves outcomes out. */
  async getJob(req: GetJobRequest): Promise<GetJobResponse> {
    return { job: (await jobEvent(this.ctx, this.require(req.id))).job };
  }

  listJobs(req: ListJobsRequest): ListJobsResponse {
    if (req.pageSize < 0)
      throw new EngineError("INVALID_ARGUMENT", "page_size must not be negative", {
        reason: "INVALID_PAGE_SIZE",
      });
    const pageSize = Math.min(req.pageSize === 0 ? DEFAULT_PAGE_SIZE : req.pageSize, MAX_PAGE_SIZE);
    const states = req.states.map((s) => jobStateFromWire(s)).filter((s): s is JobState => s !== undefined);
    const kind = req.kind === JobKind.JOB_KIND_UNSPECIFIED ? undefined : jobKindFromWire(req.kind);
    const before = req.pageToken === "" ? undefined : decodeToken(req.pageToken);
    const rows = this.ctx.catalog.listJobs({
      limit: pageSize + 1,
      ...(req.volume === "" ? {} : { volume: req.volume }),
      ...(states.length === 0 ? {} : { states: storedStatesFor(states) }),
      ...(kind === undefined ? {} : { kind }),
      ...(before === undefined ? {} : { before }),
    });
    const scanned = rows.slice(0, pageSize);
    const page = scanned
      .map((r) => this.ctx.jobs.get(r.id) ?? r)
      .filter((j) => states.length === 0 || states.includes(j.state));
    // The token follows the rows scanned, so a page thinned by the state filter still pages on correctly.
    const last = scanned[scanned.length - 1];
    return {
      jobs: page.map(jobMessage),
      nextPageToken:
        rows.length > pageSize && last !== undefined
          ? Buffer.from(JSON.stringify([last.createTime.getTime(), last.id])).toString("base64url")
          : "",
    };
  }

  async *watchJob(req: WatchJobRequest, call: CallContext): AsyncGenerator<JobEvent> {
    this.require(req.id);
    for await (const snapshot of this.ctx.jobs.watch(req.id, call.signal))
      yield await jobEvent(this.ctx, snapshot, call.signal);
  }

  cancelJob(req: CancelJobRequest): CancelJobResponse {
    this.require(req.id);
    return { job: jobMessage(this.ctx.jobs.cancel(req.id)) };
  }

  private require(id: string): JobRecord {
    if (id === "" || id.length > 128)
      throw new EngineError("INVALID_ARGUMENT", "id must be a job id", { reason: "INVALID_JOB_ID" });
    const job = this.ctx.jobs.get(id);
    if (job === undefined)
      throw new EngineError("NOT_FOUND", `job "${id}" not found`, {
        reason: "JOB_NOT_FOUND",
        metadata: { job: id },
      });
    return job;
  }
}

/**
 * The stored states that may hold a job now in one of `states`: a running job's row can still say QUEUED
 * (RUNNING gets no commit of its own), so either one selects both, and the live state decides.
 */
function storedStatesFor(states: readonly JobState[]): JobState[] {
  const unfinished = states.includes("QUEUED") || states.includes("RUNNING");
  return unfinished ? [...new Set<JobState>([...states, "QUEUED", "RUNNING"])] : [...states];
}

function decodeToken(token: string): { createTime: number; id: string } {
  try {
    const [createTime, id] = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as unknown[];
    if (typeof createTime === "number" && typeof id === "string") return { createTime, id };
  } catch {
    // fall through
  }
  throw new EngineError("INVALID_ARGUMENT", "page_token is not a token this server issued", {
    reason: "INVALID_PAGE_TOKEN",
  });
}
