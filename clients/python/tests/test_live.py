"""Contract test: the generated Python stubs + grpcio against a live vdisk server.

Run with VDISK_TARGET=HOST:PORT (the TypeScript test suite starts a server and runs this).
"""

import os
import sys
import unittest
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import grpc  # noqa: E402

from vdisk_client import VdiskClient, error_info, job_pb2, volume_pb2  # noqa: E402

TARGET = os.environ.get("VDISK_TARGET", "127.0.0.1:50051")


class LiveServerTest(unittest.TestCase):
    def setUp(self) -> None:
        self.vdisk = VdiskClient(TARGET)
        self.name = f"py-{uuid.uuid4().hex[:12]}"

    def tearDown(self) -> None:
        try:
            self.vdisk.delete_volume(self.name)
        except grpc.RpcError:
            pass
        self.vdisk.close()

    def test_create_write_map_and_watch(self) -> None:
        events = []
        job = self.vdisk.create_volume(self.name, 64 << 20, on_progress=events.append)
        self.assertEqual(job.state, job_pb2.JOB_STATE_SUCCEEDED)
        self.assertTrue(job.id.startswith("job-"))
        self.assertGreaterEqual(len(events), 2, "the stream carries at least the start and the end")

        # WatchJob from a second call re-attaches to the finished job and ends with its terminal state.
        watched = list(self.vdisk.jobs.WatchJob(job_pb2.WatchJobRequest(id=job.id)))
        self.assertEqual(watched[-1].job.state, job_pb2.JOB_STATE_SUCCEEDED)

        payload = bytes(range(256)) * 256  # 64 KiB of non-zero data
        written = self.vdisk.write(self.name, 1 << 20, payload)
        self.assertEqual(written.written_bytes, len(payload))
        self.assertEqual(self.vdisk.read(self.name, 1 << 20, len(payload)), payload)

        extents = self.vdisk.allocation_map(self.name)
        data = [e for e in extents if e["data"]]
        self.assertEqual([(e["start"], e["length"]) for e in data], [(1 << 20, len(payload))])
        self.assertEqual(sum(e["length"] for e in extents), 64 << 20)

        volume = self.vdisk.get_volume(self.name)
        self.assertEqual(volume.capacity_bytes, 64 << 20)
        self.assertEqual(volume.allocation_bytes, len(payload))

    def test_errors_arrive_with_the_right_code_and_reason(self) -> None:
        with self.assertRaises(grpc.RpcError) as missing:
            self.vdisk.get_volume(f"absent-{uuid.uuid4().hex[:8]}")
        self.assertEqual(missing.exception.code(), grpc.StatusCode.NOT_FOUND)
        info = error_info(missing.exception)
        self.assertIsNotNone(info)
        self.assertEqual(info.domain, "vdisk.dev")
        self.assertTrue(info.reason)

        with self.assertRaises(grpc.RpcError) as bad_name:
            list(self.vdisk.volumes.CreateVolume(volume_pb2.CreateVolumeRequest(name="../etc", format=1, capacity_bytes=1 << 20)))
        self.assertEqual(bad_name.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

        self.vdisk.create_volume(self.name, 1 << 20)
        with self.assertRaises(grpc.RpcError) as dup:
            list(self.vdisk.volumes.CreateVolume(volume_pb2.CreateVolumeRequest(name=self.name, format=1, capacity_bytes=2 << 20)))
        self.assertEqual(dup.exception.code(), grpc.StatusCode.ALREADY_EXISTS)

        with self.assertRaises(grpc.RpcError) as past_end:
            self.vdisk.read(self.name, 1 << 20, 4096)
        self.assertEqual(past_end.exception.code(), grpc.StatusCode.OUT_OF_RANGE)


if __name__ == "__main__":
    unittest.main()
