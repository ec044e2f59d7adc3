"""Real Globus Compute tasks for gantry-engine's tests, made by the real SDK.

`make` reads a JSON list of {"case", "args", "kwargs"} on stdin and prints a JSON list of
task buffers, each `function_code + payload` exactly as the SDK and the service build it.
`decode` reads a JSON list of result `data` strings and prints what the SDK's serializer
makes of each (a ShellResult becomes a dict of its fields).

The task functions live in this `__main__` module, so dill ships them by value: the
worker needs nothing but the SDK to run them.
"""

import json
import sys

from globus_compute_sdk import ShellFunction
from globus_compute_sdk.serialize import ComputeSerializer

SERDE = ComputeSerializer()


def add(a, b=0):
    return {"sum": a + b}


def fails(x):
    raise ValueError(f"bad input {x!r}")


def fails_undecodably():
    # A message with a lone surrogate, as undecodable bytes from the OS come out.
    raise ValueError(b"caf\xe9".decode("utf-8", "surrogateescape"))


def task_uuid():
    import os

    return os.environ.get("GC_TASK_UUID")


def big(size):
    return "x" * size


def sleep(seconds):
    import time

    time.sleep(seconds)
    return seconds


def prints_then_returns(value):
    import sys

    # Neither may break the worker's protocol.
    print("noise on stdout")
    print("noise on stderr", file=sys.stderr)
    sys.stdout.flush()
    return value


def where():
    import os

    return {"cwd": os.getcwd(), "sandbox": os.environ.get("GC_TASK_SANDBOX_DIR")}


def pid_then_sleep(path, seconds):
    """Records this attempt's pid; the first attempt then sleeps (to be killed)."""
    import os
    import time

    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(path) as f:
        attempts = len(f.read().split())
    if attempts == 1:
        time.sleep(seconds)
    return attempts


def as_set(*items):
    # JSON has no sets: JSONData cannot serialize this.
    return set(items)


def exits():
    import sys

    sys.exit(3)


CASES = {
    "add": add,
    "fails": fails,
    "fails_undecodably": fails_undecodably,
    "task_uuid": task_uuid,
    "big": big,
    "sleep": sleep,
    "prints_then_returns": prints_then_returns,
    "where": where,
    "pid_then_sleep": pid_then_sleep,
    "exits": exits,
    "as_set": as_set,
}


def function_for(case):
    if case.startswith("shell:"):
        return ShellFunction(case[len("shell:"):])
    return CASES[case]


def task_buffer(case, args, kwargs):
    function_code = SERDE.pack_buffers([SERDE.serialize(function_for(case))])
    payload = SERDE.pack_buffers([SERDE.serialize(tuple(args)), SERDE.serialize(kwargs)])
    return function_code + payload


def plain(value):
    if hasattr(value, "returncode") and hasattr(value, "stdout"):
        return {
            "returncode": value.returncode,
            "stdout": value.stdout,
            "stderr": value.stderr,
            "cmd": value.cmd,
        }
    return value


def main():
    command = sys.argv[1]
    request = json.load(sys.stdin)
    if command == "make":
        out = [task_buffer(r["case"], r.get("args", []), r.get("kwargs", {})) for r in request]
    elif command == "decode":
        out = [plain(SERDE.deserialize(data)) for data in request]
    else:
        raise SystemExit(f"unknown command {command}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
