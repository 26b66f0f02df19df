"""A throw-away PostgreSQL server for the tests that read a real database.

``postgres_server`` (session scope) runs ``initdb`` into a temporary directory and starts
the server with ``pg_ctl`` on a free TCP port of 127.0.0.1, its unix socket in the same
directory, without fsync (the data is thrown away). PostgreSQL refuses to run as root,
and CI runs as root: then initdb and the server run as the ``postgres`` user (Debian's
package creates it) through ``runuser``, in a directory handed over to that user.

Missing binaries skip the tests that use it, except under CI (env CI=true), where they
must be installed and the tests fail instead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import ports
from tests.peers.process import in_ci

_START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    dbname: str
    directory: Path  # data, socket and log

    @property
    def dsn(self) -> str:
        """A libpq DSN without a password (the server trusts local connections)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={self.dbname}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = (self.directory / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}; CI must install PostgreSQL (postgresql-15)")
    pytest.skip(reason)


def _bin_dir() -> Path | None:
    """The newest PostgreSQL with initdb and pg_ctl: Debian keeps them off the PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    found = shutil.which("initdb")
    if found is not None:
        candidates.append(Path(found).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def _as_server_user(directory: Path) -> list[str]:
    """The command prefix that runs a PostgreSQL program as a user it accepts."""
    if os.geteuid() != 0:
        return []
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        _unavailable("running as root and there is no postgres user to run PostgreSQL as")
        raise AssertionError("unreachable") from None
    os.chown(directory, account.pw_uid, account.pw_gid)
    runuser = shutil.which("runuser")
    if runuser is None:
        _unavailable("running as root and runuser is not installed")
    return [str(runuser), "-u", "postgres", "--"]


def _run(command: list[str], directory: Path, what: str, server: PostgresServer | None) -> None:
    # Output to a file, not a pipe: the server pg_ctl starts must not hold our pipe open.
    with (directory / f"{what}.out").open("w+") as out:
        result = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, timeout=_START_TIMEOUT + 30,
            cwd=directory, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            out.seek(0)
            log = server.log_tail() if server is not None else ""
            pytest.fail(f"{what} failed ({result.returncode}):\n{out.read()}\n{log}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        _unavailable("PostgreSQL (initdb, pg_ctl) is not installed")
        raise AssertionError("unreachable")
    directory = Path(tempfile.mkdtemp(prefix="sipgw-pg-"))
    try:
        prefix = _as_server_user(directory)
        data = directory / "data"
        server = PostgresServer(
            "127.0.0.1", ports.free_tcp_port(), "postgres", "postgres", directory
        )
        _run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            directory, "initdb", None,
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -p {server.port} -k {directory} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        pg_ctl = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]
        _run(
            [*pg_ctl, "-l", str(directory / "server.log"), "-o", options, "-w",
             "-t", str(_START_TIMEOUT), "start"],
            directory, "pg_ctl-start", server,
        )  # fmt: skip
        try:
            yield server
        finally:
            _run([*pg_ctl, "-m", "immediate", "-w", "-t", "30", "stop"], directory, "pg_ctl-stop",
                 server)  # fmt: skip
    finally:
        shutil.rmtree(directory, ignore_errors=True)
