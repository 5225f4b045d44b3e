import type { JobSnapshot, JobStore } from "./job-types.js";

/** JobStore kept in memory: for tests, and as the reference behaviour of the catalog's store. */
export class MemoryJobStore implements JobStore {
  readonly jobs = new Map<string, JobSnapshot>();
  saves = 0;
  saveJob(job: JobSnapshot): void {
    this.saves++;
    this.jobs.set(job.id, job);
  }
  getJob(id: string): JobSnapshot | undefined {
    return this.jobs.get(id);
  }
  findJobByRequestId(requestId: string): JobSnapshot | undefined {
    for (const j of this.jobs.values()) if (j.requestId === requestId) return j;
    return undefined;
  }
}
