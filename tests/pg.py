"""A throw-away PostgreSQL cluster for the tests: a temp dir, 127.0.0.1, a free port.

``make test`` installs PostgreSQL first (scripts/ensure-postgres). When the
server cannot start, the PostgreSQL tests fail; outside CI a developer may set
``AFLOW_WITHOUT_POSTGRES=1`` to skip them, with the reason in the report.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["postgres_cluster"]


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Start a cluster; yield its URL; stop and delete it."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("PostgreSQL is not installed (run scripts/ensure-postgres)")
    root = tempfile.mkdtemp(prefix="aflow-pg-")
    data = os.path.join(root, "data")
    port = _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        if not os.path.exists(runuser):
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError("runuser is missing: as root, the server is started as 'postgres'")
        os.chown(root, *_uid_gid("postgres"))
        as_user = [runuser, "-u", "postgres", "--"]
    log = os.path.join(root, "server.log")
    try:
        subprocess.run(
            [*as_user, initdb, "-D", data, "-U", "aflow", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*as_user, pg_ctl, "-D", data, "-o", options, "-l", log, "-w", "start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except subprocess.CalledProcessError as exc:
        text = exc.stderr.decode(errors="replace") if exc.stderr else ""
        if os.path.exists(log):
            with open(log) as f:
                text += f.read()
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {text[-2000:]}") from exc
    try:
        yield f"postgresql://aflow@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


def _uid_gid(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid
