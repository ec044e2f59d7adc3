"""Cross-implementation cases for gantry-protocol, made by the real Globus Compute packages.

`generate` prints a JSON document of cases: proto1 messages packed by
globus_compute_common, payloads serialized and packed by globus_compute_sdk, and real
results made by running real tasks through globus_compute_endpoint's execute_task.
`verify` reads the Rust side's re-encodings (JSON on stdin) and checks that the Python
packages decode each one back equal to the original. Nothing here is hand-copied: every
byte comes from the packages under test.
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import uuid

from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import (
    EPStatusReport,
    ManagerStatusReport,
    Result,
    ResultErrorDetails,
    Task,
    TaskCancel,
    TaskTransition,
)
from globus_compute_common.tasks import ActorName, TaskState
from globus_compute_sdk.serialize import ComputeSerializer
from globus_compute_sdk.serialize.concretes import DillCodeSource, JSONData
from globus_compute_sdk.sdk.batch import create_user_runtime

SERDE = ComputeSerializer()
NON_ASCII = "naïve café ☃ 𝄞 日本語 \u2028 \x00\x1f \"quoted\" \\back\\"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def add(a, b=0, *, c=""):
    return {"sum": a + b, "c": c, "nested": [a, (b, {"k": c})]}


def fails(x):
    raise ValueError(f"bad input ¿{x}? ☃")


def transition(state: TaskState, actor: ActorName, ts: int) -> TaskTransition:
    return TaskTransition(timestamp=ts, state=state, actor=actor)


def task_buffer(fn, *args, **kwargs) -> tuple[str, str, str]:
    """Builds task_buffer as the service does: function_code + payload."""
    function_code = SERDE.pack_buffers([SERDE.serialize(fn)])
    payload = SERDE.pack_buffers([SERDE.serialize(args), SERDE.serialize(kwargs)])
    return function_code, payload, function_code + payload


def run_real_task(fn, *args, **kwargs) -> bytes:
    """Runs one task through the official endpoint's worker function; returns its Result."""
    from globus_compute_endpoint.engines.helper import execute_task

    task_id = uuid.uuid4()
    _, _, buffer = task_buffer(fn, *args, **kwargs)
    task = messagepack.pack(Task(task_id=task_id, task_buffer=buffer))
    with tempfile.TemporaryDirectory() as run_dir:
        return execute_task(task, task_id, uuid.uuid4(), run_dir=run_dir)


def messages() -> list[tuple[str, bytes]]:
    tid = uuid.uuid4()
    long_text = ("ü€𝄞x" * 300_000)[:1_000_003]
    _, _, buffer = task_buffer(add, 1, b=NON_ASCII, c="ç")
    transitions = [
        transition(TaskState.WAITING_FOR_NODES, ActorName.INTERCHANGE, 1),
        transition(TaskState.RUNNING, ActorName.MANAGER, 1_732_000_000_123_456_789),
    ]
    return [
        ("task", messagepack.pack(Task(task_id=tid, task_buffer=buffer))),
        (
            "task_with_container_id",
            messagepack.pack(Task(task_id=tid, container_id=uuid.uuid4(), task_buffer="")),
        ),
        ("task_long_non_ascii", messagepack.pack(Task(task_id=tid, task_buffer=long_text))),
        ("result_real_success", run_real_task(add, 2, b=3, c=NON_ASCII)),
        ("result_real_error", run_real_task(fails, NON_ASCII)),
        (
            "result_nested_details",
            messagepack.pack(
                Result(
                    task_id=tid,
                    data=SERDE.serialize({"deep": [[{"x": NON_ASCII}]] * 3}),
                    details={"a": {"b": [1, 2.5, None, True, {"c": NON_ASCII}]}, "n": -7},
                    task_statuses=transitions,
                )
            ),
        ),
        (
            "result_error_details",
            messagepack.pack(
                Result(
                    task_id=tid,
                    data="Traceback …\n" + NON_ASCII,
                    error_details=ResultErrorDetails(
                        code="FUNCTION_NOT_ALLOWED", user_message=NON_ASCII
                    ),
                )
            ),
        ),
        (
            "ep_status_report",
            messagepack.pack(
                EPStatusReport(
                    endpoint_id=uuid.uuid4(),
                    global_state={
                        "heartbeat_period": 30,
                        "active": True,
                        "info": {"name": NON_ASCII, "load": 0.25},
                    },
                    task_statuses={str(tid): transitions},
                )
            ),
        ),
        (
            "ep_status_report_error",
            messagepack.pack(
                EPStatusReport(
                    endpoint_id=uuid.uuid4(),
                    global_state={"heartbeat_period": 0, "error": "start failed: " + NON_ASCII},
                    task_statuses={},
                )
            ),
        ),
        ("task_transition", messagepack.pack(transitions[1])),
        (
            "manager_status_report",
            messagepack.pack(ManagerStatusReport(task_statuses={str(tid): transitions})),
        ),
        ("task_cancel", messagepack.pack(TaskCancel(task_id=tid))),
    ]


def packed_cases() -> list[dict]:
    fn_code, payload, _ = task_buffer(add, 1, b=NON_ASCII, c="ç" * 70_000)
    many = [SERDE.serialize(x) for x in ("", NON_ASCII, "x" * 100_000, [NON_ASCII] * 50)]
    source = ComputeSerializer(strategy_code=DillCodeSource())
    json_data = ComputeSerializer(strategy_data=JSONData())
    cases = [
        ("function_code", fn_code),
        ("payload_args_kwargs", payload),
        ("task_buffer", fn_code + payload),
        ("many_buffers", SERDE.pack_buffers(many)),
        ("raw_non_ascii", SERDE.pack_buffers([NON_ASCII, "", "\n\n", "ü" * 3])),
        ("source_code", SERDE.pack_buffers([source.serialize(add)])),
        ("json_data", SERDE.pack_buffers([json_data.serialize({"k": [NON_ASCII, 1]})])),
    ]
    out = []
    for name, packed in cases:
        buffers = SERDE.unpack_buffers(packed)
        out.append(
            {
                "name": name,
                "packed": packed,
                "buffers": buffers,
                "strategies": [b[:2] if len(b) >= 3 and b[2] == "\n" else None for b in buffers],
            }
        )
    return out


def uep_id_cases() -> list[dict]:
    """Computes UEP ids from the layout documented in gantry_protocol::uep_id, in Python."""
    runtime = json.loads(json.dumps(create_user_runtime().__dict__, default=lambda o: o.__dict__))
    configs = [
        {},
        {"ACCOUNT_ID": "314159265", "walltime": "00:02:00"},
        {"ACCOUNT_ID": "543126688"},
        {"nested": {"z": [1, 2, {"b": None, "a": True}], "é": NON_ASCII}, "A": -3},
    ]
    out = []
    for config in configs:
        for python in ("3.11", "3.12", ""):
            mep, identity = uuid.uuid4(), uuid.uuid4()
            canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            name = b"\x00".join(
                [b"gantry-uep-v1", str(identity).encode(), canonical.encode(), python.encode()]
            )
            out.append(
                {
                    "mep_id": str(mep),
                    "identity_id": str(identity),
                    "config": config,
                    "python": python,
                    "uep_id": str(uuid.uuid5(mep, name.decode("utf-8"))),
                }
            )
    return out, runtime


def generate() -> None:
    uep_ids, runtime = uep_id_cases()
    cases = {
        "messages": [
            {
                "name": name,
                "bytes_b64": b64(raw),
                "message_type": type(messagepack.unpack(raw)).Meta.message_type,
                "data": messagepack.unpack(raw).model_dump(mode="json"),
            }
            for name, raw in messages()
        ],
        "packed": packed_cases(),
        "uep_ids": uep_ids,
        "user_runtime": runtime,
        "python_major_minor": "%d.%d" % sys.version_info[:2],
    }
    json.dump(cases, sys.stdout, ensure_ascii=False)


def verify() -> None:
    """Reads {"messages":[{name, original_b64, rust_b64}], "packed":[{name, original, rust}]}."""
    request = json.load(sys.stdin)
    failures = []
    for case in request["messages"]:
        original = messagepack.unpack(base64.b64decode(case["original_b64"]))
        try:
            rust = messagepack.unpack(base64.b64decode(case["rust_b64"]))
        except Exception as e:  # noqa: BLE001 - report, don't stop at the first
            failures.append(f"{case['name']}: Python cannot read Rust's bytes: {e!r}")
            continue
        if type(rust) is not type(original) or rust != original:
            failures.append(f"{case['name']}: decoded differently: {rust!r} != {original!r}")
    for case in request["packed"]:
        original = SERDE.unpack_buffers(case["original"])
        try:
            rust = SERDE.unpack_buffers(case["rust"])
        except Exception as e:  # noqa: BLE001
            failures.append(f"{case['name']}: Python cannot unpack Rust's buffers: {e!r}")
            continue
        if rust != original:
            failures.append(f"{case['name']}: unpacked differently")
    json.dump({"checked": len(request["messages"]) + len(request["packed"]), "failures": failures}, sys.stdout)


if __name__ == "__main__":
    {"generate": generate, "verify": verify}[sys.argv[1]]()
