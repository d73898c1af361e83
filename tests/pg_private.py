"""A PostgreSQL server of the test's own (initdb into a temporary directory, a free port),
for tests that stop and restart it under traffic without disturbing anyone else's.

Not a test module. PostgreSQL refuses to run as root, so as root the cluster runs as the
`postgres` user (Debian's packages create it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.core.net import free_port


def _bin_dir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def available() -> bool:
    return _bin_dir() is not None and (os.geteuid() != 0 or shutil.which("runuser") is not None)


class PrivatePostgres:
    def __init__(self) -> None:
        bin_dir = _bin_dir()
        assert bin_dir is not None, "PostgreSQL's server binaries are not installed"
        self.bin_dir = bin_dir
        # Its own directory under the system's temporary one: pytest's are private to root.
        self.workdir = Path(tempfile.mkdtemp(prefix="tailor-pg-"))
        self.data = self.workdir / "pgdata"
        self.port = free_port()
        self.log = self.workdir / "postgres.log"
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", *extra, action)

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(server.workdir, ignore_errors=True)
