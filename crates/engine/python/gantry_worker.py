"""Gantry's Python worker: runs Globus Compute tasks for one Gantry worker pool.

It ships inside Gantry (the pool writes this file to its run directory and starts it), so
the only thing a user's environment needs is ``globus-compute-sdk``, whose serializer
unpacks the function and its arguments exactly as the SDK packed them.

The pool talks to it over stdin and stdout, one JSON object per line:

* worker -> pool, once at start: ``{"type": "hello", "python": "3.11.2", "executable",
  "pid", "sdk": "4.19.0", "details"}``, or ``"sdk_error"`` instead of ``"sdk"`` when the
  SDK cannot be imported, or ``"config_error"`` when the configuration cannot be used;
  ``details`` is the environment the official worker reports in each result's
  ``details`` (``os``, ``python_version``, ``dill_version``,
  ``globus_compute_sdk_version``), which the SDK compares with its own;
* pool -> worker: ``{"task_id", "task_buffer", "result_serializers"}``, the last
  ``null`` or a list of import paths of SDK serialization strategies for the result;
* worker -> pool: ``{"type": "result", "task_id", "data", "error"}``, where ``error`` is
  ``null`` or ``{"code", "user_message"}`` and ``data`` then holds the traceback.

The configuration is the one command-line argument, as JSON: ``threads`` (tasks run at
once; 1 runs them one after another in the main thread), ``working_dir``,
``run_in_sandbox``, ``allowed_serializers``, ``result_size_limit``, ``traceback_limit``.

Task code must not be able to break the protocol: the worker keeps private copies of
its pipes, then points file descriptor 0 at /dev/null and 1 at stderr, so that a task's
``print`` (or a shell command's output) lands in the pool's log instead.
"""

import json
import os
import platform
import sys
import threading
import traceback


def _private_pipes():
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull)
    sys.stdout = sys.stderr
    return proto_in, proto_out


class Channel:
    """The protocol's output side; threads share it."""

    def __init__(self, stream):
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message):
        try:
            # UTF-8 rather than \u escapes: at most 6 bytes for any character, so a
            # result within the size limit always fits the pool's line limit.
            line = (json.dumps(message, ensure_ascii=False) + "\n").encode()
        except UnicodeEncodeError:
            # A lone surrogate (undecodable bytes in a traceback, say) cannot be sent
            # as UTF-8; replace it rather than lose the message.
            line = (json.dumps(_replace_surrogates(message), ensure_ascii=False) + "\n").encode()
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (BrokenPipeError, OSError):
                # The pool is gone; so is the point of running.
                os._exit(1)


def _replace_surrogates(value):
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {k: _replace_surrogates(v) for k, v in value.items()}
    return value


def _hello(config):
    info = {
        "type": "hello",
        "python": platform.python_version(),
        "executable": sys.executable,
        "pid": os.getpid(),
    }
    try:
        import globus_compute_sdk
        from globus_compute_sdk.serialize import ComputeSerializer
    except Exception as e:  # ImportError, or a broken install failing in its own way
        info["sdk_error"] = f"{type(e).__name__}: {e}"
        return info, None
    info["sdk"] = getattr(globus_compute_sdk, "__version__", "unknown")
    info["details"] = _environment(info["sdk"])
    try:
        allowed = config.get("allowed_serializers") or None
        serde = ComputeSerializer(allowed_deserializer_types=allowed)
    except Exception as e:
        info["config_error"] = f"allowed_serializers cannot be used: {type(e).__name__}: {e}"
        return info, None
    return info, serde


def _environment(sdk_version):
    # The same facts, under the same keys, as the SDK's own environment report: the SDK
    # warns about any difference (a dill or Python mismatch breaks deserialization).
    try:
        import dill

        dill_version = dill.__version__
    except Exception:
        dill_version = "unknown"
    return {
        "os": platform.platform(),
        "python_version": platform.python_version(),
        "dill_version": dill_version,
        "globus_compute_sdk_version": sdk_version,
    }


class ResultSerializerError(Exception):
    """None of the task's result_serializers could serialize its result."""


def _unpack(serde, task_buffer):
    if hasattr(serde, "unpack_and_deserialize"):
        return serde.unpack_and_deserialize(task_buffer)
    buffers = serde.unpack_buffers(task_buffer)
    if len(buffers) != 3:
        raise ValueError(f"expected 3 packed buffers (function, args, kwargs), got {len(buffers)}")
    return tuple(serde.deserialize(b) for b in buffers)


def _serialize(serde, value, strategies):
    # As the official worker: the default data strategy, or code for a callable; or the
    # first of the submitter's strategies that can serialize the value.
    if not strategies:
        if hasattr(serde, "serialize_from_list"):
            return serde.serialize_from_list(value, ())
        return serde.serialize(value)
    if not hasattr(serde, "serialize_from_list"):
        raise ResultSerializerError(
            "result_serializers were requested, but the workers' globus-compute-sdk "
            f"{_sdk_version()} cannot choose a result serializer; install a newer "
            "globus-compute-sdk where the workers run, or submit without result_serializers"
        )
    # One at a time, so that each failure can be told apart in the message.
    failures = []
    for strategy in strategies:
        try:
            return serde.serialize_from_list(value, [strategy])
        except Exception as e:
            failures.append(f"  {strategy!r}: {_why(e)}")
    raise ResultSerializerError(
        f"the task's result ({type(value).__name__}) could not be serialized with any of "
        "its result_serializers (import paths of globus_compute_sdk serialization "
        "strategies, e.g. 'globus_compute_sdk.serialize.JSONData'):\n" + "\n".join(failures)
    )


def _why(error):
    # serialize_from_list raises "All strategies failed" from a group holding the real
    # reason, which may itself come from an import error: name the innermost two.
    cause = error.__cause__
    inner = (getattr(cause, "exceptions", None) or [cause or error])[0]
    text = f"{type(inner).__name__}: {inner}"
    if inner.__cause__ is not None:
        text += f" ({type(inner.__cause__).__name__}: {inner.__cause__})"
    return text


def _sdk_version():
    try:
        import globus_compute_sdk

        return getattr(globus_compute_sdk, "__version__", "unknown")
    except Exception:
        return "unknown"


def _traceback_text(exc, limit):
    # Drop this file's own frames, so the traceback starts in the task's code, as the
    # official endpoint's does; keep them if the error happened here.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
    if len(text) > limit:
        # The end says what was raised; keep it.
        text = f"[traceback truncated to its last {limit} characters]\n" + text[-limit:]
    return text


def _failure(task_id, code, user_message, data):
    return {
        "type": "result",
        "task_id": task_id,
        "data": data,
        "error": {"code": code, "user_message": user_message},
    }


def run_task(serde, config, task_id, task_buffer, result_serializers=None):
    """Runs one task and returns its result message; never raises."""
    os.environ["GC_TASK_UUID"] = task_id
    os.environ.pop("GC_TASK_SANDBOX_DIR", None)
    limit = int(config["result_size_limit"])
    try:
        task_dir = config["working_dir"]
        if config.get("run_in_sandbox"):
            task_dir = os.path.join(task_dir, task_id)
            os.environ["GC_TASK_SANDBOX_DIR"] = task_dir
        os.makedirs(task_dir, exist_ok=True)
        os.chdir(task_dir)
        function, args, kwargs = _unpack(serde, task_buffer)
        data = _serialize(serde, function(*args, **kwargs), result_serializers)
        if len(data) > limit:
            return _failure(
                task_id,
                "MaxResultSizeExceeded",
                f"remote error: Task result of {len(data)}B exceeded current limit of {limit}B",
                f"MaxResultSizeExceeded: Task result of {len(data)}B exceeded current limit "
                f"of {limit}B; return less data, or write it to a file and return its path",
            )
        return {"type": "result", "task_id": task_id, "data": data, "error": None}
    except ResultSerializerError as e:
        return _failure(
            task_id,
            "RemoteExecutionError",
            "An error occurred during the execution of this task",
            f"ResultSerializerError: {e}",
        )
    except (Exception, SystemExit) as e:
        # SystemExit too: a task that calls sys.exit() fails; the worker carries on.
        return _failure(
            task_id,
            "RemoteExecutionError",
            "An error occurred during the execution of this task",
            _traceback_text(e, int(config["traceback_limit"])),
        )


def main():
    config = json.loads(sys.argv[1])
    proto_in, proto_out = _private_pipes()
    channel = Channel(proto_out)
    info, serde = _hello(config)
    channel.send(info)
    if serde is None:
        return 0
    threads = max(1, int(config.get("threads", 1)))
    executor = None
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gantry-task")

    def run_and_reply(task_id, task_buffer, result_serializers):
        channel.send(run_task(serde, config, task_id, task_buffer, result_serializers))

    for line in proto_in:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            task_id, task_buffer = request["task_id"], request["task_buffer"]
            result_serializers = request.get("result_serializers") or None
        except Exception as e:
            print(f"gantry worker: ignoring a malformed request: {e}", file=sys.stderr)
            continue
        if executor is None:
            run_and_reply(task_id, task_buffer, result_serializers)
        else:
            executor.submit(run_and_reply, task_id, task_buffer, result_serializers)
    # The pool closed the pipe: stop now, without waiting for threads still running.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
