"""The scientist's side of the gantry-endpoint tests: the real globus-compute-sdk submits
to Gantry's own multi-user endpoint and reports what the task saw where it ran.

Usage: uep_client.py SCENARIO with GANTRY_TOKEN, ENDPOINT_ID, USER_ENDPOINT_CONFIG (JSON)
and RESULT_TIMEOUT in the environment. Prints one JSON document.
"""

import json
import os
import sys

import globus_sdk
import globus_compute_sdk as GC


def probe():
    """Where and as whom the task runs."""
    import getpass
    import os

    def title(pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode().strip()
        except OSError:
            return ""

    def parent(pid):
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])

    chain = []
    pid = os.getpid()
    for _ in range(6):
        pid = parent(pid)
        if pid <= 1:
            break
        chain.append({"pid": pid, "title": title(pid)})
    return {
        "user": getpass.getuser(),
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": sorted(os.getgroups()),
        "home": os.environ.get("HOME"),
        "env": {k: os.environ.get(k) for k in ("USER", "PATH", "GANTRY_TEST_MARK", "GC_TASK_UUID")},
        "env_keys": sorted(os.environ),
        "umask": os.umask(0o077),
        "ancestors": chain,
    }


def fails(x):
    raise ValueError(f"refused {x!r}")


def add(a, b):
    return a + b


def sleeper(marker):
    """Writes its worker's pid and sleeps, so the test can kill the worker; a retry finds
    the marker and returns at once."""
    import os
    import time

    if os.path.exists(marker + ".pid"):
        return "retried"
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker + ".pid")
    time.sleep(60)
    return "slept"


def main():
    gcc = GC.Client(
        local_compute_services=True,
        authorizer=globus_sdk.AccessTokenAuthorizer(os.environ["GANTRY_TOKEN"]),
    )
    kwargs = {"endpoint_id": os.environ["ENDPOINT_ID"], "client": gcc}
    if os.environ.get("USER_ENDPOINT_CONFIG"):
        kwargs["user_endpoint_config"] = json.loads(os.environ["USER_ENDPOINT_CONFIG"])
    timeout = float(os.environ.get("RESULT_TIMEOUT", "60"))
    scenario = sys.argv[1]
    ex = GC.Executor(**kwargs)
    out = {}
    try:
        if scenario == "batch":
            n = int(os.environ.get("BATCH_SIZE", "1000"))
            futures = [ex.submit(add, i, i) for i in range(n)]
            results = [f.result(timeout=timeout) for f in futures]
            out["wrong"] = [i for i, r in enumerate(results) if r != 2 * i]
            out["count"] = len(results)
            json.dump(out, sys.stdout)
            sys.stdout.flush()
            os._exit(0)
        if scenario == "probe":
            fut = ex.submit(probe)
        elif scenario == "sleeper":
            fut = ex.submit(sleeper, os.environ["MARKER"])
        elif scenario == "fails":
            fut = ex.submit(fails, "this")
        else:
            raise SystemExit(f"unknown scenario {scenario}")
        import warnings

        # The SDK warns when a result's details show another Python or dill than its own
        # (or none at all); the test wants to see any warning.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out["result"] = fut.result(timeout=timeout)
            except Exception as e:  # noqa: BLE001 - the test checks which
                out["error"] = {"type": type(e).__name__, "text": str(e)}
        out["warnings"] = [str(w.message) for w in caught]
        # The id arrives with the submit's answer, so read it once the future is done.
        out["task_id"] = fut.task_id
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
    json.dump(out, sys.stdout)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
