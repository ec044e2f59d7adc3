"""Runs Globus Compute tasks for Gantry's Rust test endpoint.

Reads one JSON request per line on stdin, {"task_id", "task_buffer"}, and writes one JSON
reply per line on stdout, {"task_id", "data", "error"}: `data` is the serialized return
value, or on failure the traceback text with `error` = {"code", "user_message"}. The
function and its arguments are deserialized with the real globus-compute-sdk serializer,
so what runs here is exactly what the SDK sent.
"""

import json
import os
import sys
import traceback

from globus_compute_sdk.serialize import ComputeSerializer

SERDE = ComputeSerializer()


def run(task_id: str, task_buffer: str) -> dict:
    os.environ["GC_TASK_UUID"] = task_id
    try:
        buffers = SERDE.unpack_buffers(task_buffer)
        if len(buffers) != 3:
            raise ValueError(f"expected 3 packed buffers (function, args, kwargs), got {len(buffers)}")
        function, args, kwargs = (SERDE.deserialize(b) for b in buffers)
        return {"task_id": task_id, "data": SERDE.serialize(function(*args, **kwargs)), "error": None}
    except Exception:
        return {
            "task_id": task_id,
            "data": traceback.format_exc(),
            "error": {
                "code": "RemoteExecutionError",
                "user_message": "An error occurred during the execution of this task",
            },
        }


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        reply = run(request["task_id"], request["task_buffer"])
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
