"""A throwaway PostgreSQL cluster for a test: made in a temporary folder with Debian's
`postgresql` binaries, run as the `postgres` user when the test runs as root (initdb refuses
root), and stopped by its postmaster's process ID."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_mlflow_integration import free_port


def _bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_owner(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


@contextlib.contextmanager
def postgres_database(folder: Path):
    """`postgresql://mlflow@127.0.0.1:PORT/mlflow`, an empty database, for the block."""
    bindir = _bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode:
        pytest.skip("running as root without a postgres user to run PostgreSQL as")
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "pgdata"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        for parent in folder.parents:  # the postgres user must be able to reach the folder
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
    port = free_port()
    _as_owner([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow",
               "--no-sync"])
    _as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"),
               "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
               "-w", "start"])
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        _as_owner([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                   "mlflow", "mlflow"])
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast shutdown"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
