"""The scientist's side of Gantry's service tests: the real globus-compute-sdk, unchanged,
pointed at the local service the way a user would (environment "local", a bearer token).

Usage: sdk_client.py SCENARIO; settings come from the environment:
GANTRY_TOKEN, ENDPOINT_ID, optional USER_ENDPOINT_CONFIG (JSON), TASK_GROUP_ID.
Prints one JSON document on stdout.
"""

import json
import os
import sys

import globus_sdk
import globus_compute_sdk as GC

NON_ASCII = "naïve café ☃ 𝄞 日本語"


def add(a, b=0):
    return a + b


def shout(text):
    return {"upper": text.upper(), "len": len(text), "nested": [text, {"again": text}]}


def who():
    import getpass
    import os

    return {"user": getpass.getuser(), "task_uuid": os.environ.get("GC_TASK_UUID")}


def fails(x):
    raise ValueError(f"refused {x!r} ☃")


def pair(a, b):
    return (a, b)


def wait_for(path):
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.05)
    return "released"


def client() -> GC.Client:
    return GC.Client(
        local_compute_services=True,
        authorizer=globus_sdk.AccessTokenAuthorizer(os.environ["GANTRY_TOKEN"]),
    )


def executor_kwargs() -> dict:
    kwargs = {"endpoint_id": os.environ["ENDPOINT_ID"], "client": client()}
    if os.environ.get("USER_ENDPOINT_CONFIG"):
        kwargs["user_endpoint_config"] = json.loads(os.environ["USER_ENDPOINT_CONFIG"])
    return kwargs


def executor() -> dict:
    """Submits a mix of tasks through the Executor and collects what comes back."""
    timeout = float(os.environ.get("RESULT_TIMEOUT", "60"))
    with GC.Executor(**executor_kwargs()) as ex:
        futures = {
            "add": ex.submit(add, 40, b=2),
            "shout": ex.submit(shout, NON_ASCII),
            "who": ex.submit(who),
            "fails": ex.submit(fails, NON_ASCII),
            "many": [ex.submit(add, i, i) for i in range(20)],
        }
        out = {"results": {}, "errors": {}, "task_ids": {}}
        for name, fut in futures.items():
            if isinstance(fut, list):
                out["results"][name] = [f.result(timeout=timeout) for f in fut]
                continue
            out["task_ids"][name] = fut.task_id
            try:
                out["results"][name] = fut.result(timeout=timeout)
            except Exception as e:  # noqa: BLE001 - the test checks which
                out["errors"][name] = {"type": type(e).__name__, "text": str(e)}
        out["task_group_id"] = str(ex.task_group_id)
        return out


def submit_only() -> dict:
    """Submits a batch (with a result queue) and returns the ids without waiting."""
    gcc = client()
    fn = gcc.register_function(add)
    batch = gcc.create_batch(create_websocket_queue=True)
    for i in range(5):
        batch.add(fn, args=(i, 100))
    response = gcc.batch_run(os.environ["ENDPOINT_ID"], batch)
    return {"task_ids": response["tasks"][fn], "task_group_id": response["task_group_id"]}


def reload() -> dict:
    """Picks up a task group's results in a new process, as after a client restart."""
    timeout = float(os.environ.get("RESULT_TIMEOUT", "60"))
    with GC.Executor(**executor_kwargs()) as ex:
        futures = ex.reload_tasks(os.environ["TASK_GROUP_ID"])
        return {"results": sorted(f.result(timeout=timeout) for f in futures)}


def single() -> dict:
    """Two tasks through the Executor (a sum, and who ran it). Reports each result, or
    the first error under "error" and every error under "errors"; never waits longer
    than RESULT_TIMEOUT for either, so a lost task shows as a TimeoutError."""
    timeout = float(os.environ.get("RESULT_TIMEOUT", "60"))
    ex = GC.Executor(**executor_kwargs())
    try:
        futures = {"result": ex.submit(add, 1, 2), "who": ex.submit(who)}
        out: dict = {}
        for key, fut in futures.items():
            try:
                out[key] = fut.result(timeout=timeout)
            except Exception as e:  # noqa: BLE001 - the test checks which
                error = {"type": type(e).__name__, "text": str(e)}
                out.setdefault("error", error)
                out.setdefault("errors", {})[key] = error
        out["task_id"] = futures["result"].task_id
        return out
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def client_poll() -> dict:
    """Client.run then REST polling, without AMQP (create_queue is false)."""
    import time

    gcc = client()
    fn = gcc.register_function(add)
    task_id = gcc.run(5, 6, endpoint_id=os.environ["ENDPOINT_ID"], function_id=fn)
    deadline = time.time() + float(os.environ.get("RESULT_TIMEOUT", "60"))
    while time.time() < deadline:
        try:
            return {"task_id": task_id, "result": gcc.get_result(task_id), "status": gcc.get_task(task_id)["status"]}
        except GC.errors.TaskPending:
            time.sleep(0.2)
    raise TimeoutError(task_id)


def serializers() -> dict:
    """A task whose result the endpoint serializes as JSON (result_serializers): a tuple
    comes back as a list, where the default (dill) would keep it a tuple."""
    from globus_compute_sdk.serialize import JSONData

    timeout = float(os.environ.get("RESULT_TIMEOUT", "60"))
    with GC.Executor(**executor_kwargs(), result_serializers=[JSONData()]) as ex:
        value = ex.submit(pair, 1, "two").result(timeout=timeout)
    return {"value": value, "type": type(value).__name__}


def discovery() -> dict:
    """What a user finds with Client.get_endpoints (by role), and delete_function."""
    gcc = client()
    out = {
        "owned": sorted(ep["uuid"] for ep in gcc.get_endpoints()),
        "any": sorted(ep["uuid"] for ep in gcc.get_endpoints(role="any")),
    }
    fn = gcc.register_function(add)
    gcc.delete_function(fn)
    try:
        gcc.get_function(fn)
        out["after_delete"] = "found"
    except globus_sdk.GlobusAPIError as e:
        out["after_delete"] = e.http_status
    return out


def running() -> dict:
    """A task that runs until released: the SDK's get_task must show it running (the
    endpoint reports execution-start in a heartbeat) before it is released."""
    import tempfile
    import time

    gcc = client()
    fn = gcc.register_function(wait_for)
    release = os.path.join(tempfile.mkdtemp(), "release")
    task_id = gcc.run(release, endpoint_id=os.environ["ENDPOINT_ID"], function_id=fn)
    deadline = time.time() + float(os.environ.get("RESULT_TIMEOUT", "60"))
    seen = []
    while time.time() < deadline:
        status = gcc.get_task(task_id)["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "running":
            break
        time.sleep(0.1)
    open(release, "w").close()
    while time.time() < deadline:
        try:
            return {"statuses": seen, "result": gcc.get_result(task_id)}
        except GC.errors.TaskPending:
            time.sleep(0.1)
    raise TimeoutError(task_id)


if __name__ == "__main__":
    scenario = sys.argv[1]
    out = {"executor": executor, "submit_only": submit_only, "reload": reload, "client_poll": client_poll, "single": single, "serializers": serializers, "discovery": discovery, "running": running}[scenario]()
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.flush()
    # Exit now: an Executor that still waits on a lost task keeps non-daemon threads
    # alive, and the test must see its report rather than hang.
    os._exit(0)
