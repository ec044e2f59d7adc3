"""The scientist's side of the quickstart, written as a user of Globus Compute writes it.

Only the Client line is specific to a self-hosted deployment: the SDK's "local"
environment talks to http://localhost:5000, and the token comes from
`gantry-service admin add-user`. Needs GANTRY_TOKEN and MEP_ID in the environment.
"""

import json
import os
import sys

import globus_sdk
from globus_compute_sdk import Client, Executor


def where_am_i(greeting):
    """Runs on the site, inside the user endpoint that the MEP started for us."""
    import getpass
    import os
    import socket

    return {
        "greeting": greeting.upper(),
        "user": getpass.getuser(),
        "uid": os.getuid(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def main():
    client = Client(
        local_compute_services=True,
        authorizer=globus_sdk.AccessTokenAuthorizer(os.environ["GANTRY_TOKEN"]),
    )
    mep_id = os.environ["MEP_ID"]
    timeout = float(os.environ.get("RESULT_TIMEOUT", "120"))
    results = []
    # The same user with two configurations: the MEP starts two user endpoints.
    for account in ("314159265", "543126688"):
        config = {"ACCOUNT_ID": account}
        with Executor(endpoint_id=mep_id, client=client, user_endpoint_config=config) as ex:
            future = ex.submit(where_am_i, f"hello from account {account}")
            result = future.result(timeout=timeout)
            results.append({"user_endpoint_config": config, "task_id": future.task_id, "result": result})
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
