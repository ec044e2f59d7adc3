"""Prints, as one JSON object, what the endpoints benchmark submits: a no-op function
serialized and packed by the real globus-compute-sdk serializer, exactly as
``Client.register_function`` sends it, and the packed (args, kwargs) payload of a call
with no arguments and the submitter's ``user_runtime``, as the SDK's batch does. The Rust benchmark then submits these over
REST, so no SDK runs while it measures.

Run with the test venv's Python: ``python payloads.py``.
"""

import json
import sys
from dataclasses import asdict

from globus_compute_sdk.sdk.batch import create_user_runtime
from globus_compute_sdk.serialize import ComputeSerializer


def noop():
    return None


def main():
    serializer = ComputeSerializer()
    function_code = serializer.pack_buffers([serializer.serialize(noop)])
    payload = serializer.pack_buffers([serializer.serialize(()), serializer.serialize({})])
    json.dump(
        {
            "function_name": noop.__name__,
            "function_code": function_code,
            "payload": payload,
            "user_runtime": asdict(create_user_runtime()),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
