"""Example: create a thin raw volume, write to it, print its allocation map, delete it.

Run against a server started with `npm start`:  /usr/bin/python3 clients/python/example.py [HOST:PORT]
"""

import sys

from vdisk_client import VdiskClient


def main() -> None:
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    with VdiskClient(target) as vdisk:
        job = vdisk.create_volume("python-example", 1 << 30, on_progress=lambda j: print("progress", j.progress.done_bytes))
        print("created by", job.id)
        vdisk.write("python-example", 1 << 20, b"hello from python".ljust(65536, b"\0"))
        for extent in vdisk.allocation_map("python-example"):
            print(extent)
        vdisk.delete_volume("python-example")


if __name__ == "__main__":
    main()
