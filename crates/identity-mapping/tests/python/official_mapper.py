"""Maps identity sets with the official Globus Compute endpoint's mapper.

Reads a JSON list of cases on stdin, each {"mapping": [documents], "identities": [...],
"mep_id": "..."}, and prints a JSON list with, for each case, {"user": name or null}:
the name the official endpoint (globus-compute-endpoint's PosixIdentityMapper over
globus-identity-mapping) would start a user endpoint as. The choice below restates the
endpoint's own (core_endpoint.py): the first mapper with any result, its first mapping,
the first identity in it, that identity's first name; an empty name maps nobody.
"""

import json
import pathlib
import sys
import tempfile

from globus_compute_endpoint.endpoint.identity_mapper import PosixIdentityMapper


def official_user(mapping, identities, mep_id):
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "identity_mapping.json"
        path.write_text(json.dumps(mapping))
        mapper = PosixIdentityMapper(path, mep_id, poll_interval_s=3600)
        try:
            for mapped in mapper.map_identities(identities):
                if mapped:
                    _identity, usernames = next(iter(mapped[0].items()))
                    return usernames[0] or None
            return None
        finally:
            mapper.stop_watching()


cases = json.load(sys.stdin)
print(json.dumps([
    {"user": official_user(c["mapping"], c["identities"], c["mep_id"])} for c in cases
]))
