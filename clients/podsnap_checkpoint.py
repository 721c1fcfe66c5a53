"""Asks podsnap for a snapshot of this Pod: the workload side of its snapshot contract.

    from podsnap_checkpoint import maybe_snapshot
    outcome = maybe_snapshot()   # "resume", "restore", "error", or "none" outside podsnap

Call it once the workload has warmed up, before it serves. After "restore", re-read the
environment with spec_environ(), re-seed random generators and refresh credentials.
"""

import os
import time

CONTRACT_DIR = os.environ.get("PODSNAP_DIR", "/podsnap")


def maybe_snapshot(poll_seconds=0.05):
    if not os.path.isdir(CONTRACT_DIR):
        return "none"
    result = os.path.join(CONTRACT_DIR, "result")
    try:
        os.remove(result)
    except FileNotFoundError:
        pass
    with open(os.path.join(CONTRACT_DIR, "trigger"), "w") as trigger:
        trigger.write("1\n")
    while True:
        try:
            with open(result) as f:
                outcome = f.read().strip()
            if outcome in ("resume", "restore", "error"):
                if outcome == "restore":
                    import random
                    random.seed()
                return outcome
        except FileNotFoundError:
            pass
        time.sleep(poll_seconds)


def spec_environ():
    """The Pod's current environment (after a restore: the new Pod's)."""
    try:
        with open(os.path.join(CONTRACT_DIR, "spec_environ"), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return dict(os.environ)
    pairs = (entry.decode(errors="replace").split("=", 1) for entry in raw.split(b"\0") if b"=" in entry)
    return {k: v for k, v in pairs}
