"""Renders a user-endpoint template with the official globus-compute-endpoint code.

Reads one JSON case on stdin:
    {"main": name, "files": {name: text}, "user_opts": {...}, "user_runtime": {...},
     "parent_config": {...}, "schema": {...} or null,
     "identity": {"uname", "uid", "gid", "dir", "shell", "groups"}}
writes the files into a fresh folder, calls Globus Compute's own
`render_config_user_template` (the function a multi-user endpoint calls before it
starts a user endpoint), and prints {"ok": text} or {"error": "<exception type>",
"message": str}.
"""

import json
import os
import pwd
import sys
import tempfile
from pathlib import Path

from globus_compute_endpoint.endpoint.config import utils
from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity


def main() -> None:
    case = json.load(sys.stdin)
    ident = case["identity"]
    record = pwd.struct_passwd(
        (ident["uname"], "x", ident["uid"], ident["gid"], "", ident["dir"], ident["shell"])
    )
    # The real code asks the system for the account's groups; the test account is not
    # on this machine, so answer with the groups the test gave.
    os.getgrouplist = lambda _name, _gid: list(ident["groups"])
    mapped = MappedPosixIdentity(record, [], None)

    with tempfile.TemporaryDirectory() as folder:
        for name, text in case["files"].items():
            Path(folder, name).write_text(text)
        main_path = Path(folder, case["main"])
        template = utils.load_user_config_template(main_path)
        try:
            out = utils.render_config_user_template(
                case["parent_config"],
                template,
                main_path,
                mapped,
                case.get("schema"),
                case["user_opts"],
                case["user_runtime"],
            )
            result = {"ok": out}
        except Exception as e:  # the test compares failures too
            result = {"error": type(e).__name__, "message": str(e)}
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
