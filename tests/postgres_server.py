"""A real PostgreSQL server for tests: a fresh cluster in a temp dir, on a free loopback
port, with databases made on demand; stopped (and its files removed) after."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from tests.servers import free_port

STARTUP_TIMEOUT_SECS = 30.0
STOP_TIMEOUT_SECS = 10.0
POLL_SECS = 0.05
SYSTEM_USER = "postgres"  # created by Debian's package; initdb and postgres refuse root
SUPERUSER = "postgres"
# Not UTC, so that nothing can lean on the server's zone: Django sets UTC per connection.
SERVER_TIME_ZONE = "America/St_Johns"


def binary(name: str) -> str:
    """``name`` from PATH, else from Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which(name)
    if found is not None:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda path: int(Path(path).parts[-3].split(".")[0])
    )
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: run scripts/ensure-postgres (make test does).")
    return candidates[-1]


class PostgresServer:
    """``start()``, then ``create_database()`` for each test that wants a fresh one;
    ``stop()`` ends the server and removes its cluster."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.given_log_path = log_path
        self.log_path = log_path
        self.basedir: Path | None = None
        self.process: subprocess.Popen | None = None
        self._databases = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        # Its own temp dir, not pytest's: the postgres user cannot enter root's 0700 tmp_path.
        self.basedir = Path(tempfile.mkdtemp(prefix="calls-postgres-"))
        data, sockets = self.basedir / "data", self.basedir / "socket"
        data.mkdir()
        sockets.mkdir()
        self.log_path = self.given_log_path or self.basedir / "postgres.log"
        as_postgres = self._run_as()
        if as_postgres:
            for path in (self.basedir, data, sockets):
                shutil.chown(path, SYSTEM_USER, SYSTEM_USER)
        try:
            with self.log_path.open("ab") as log:
                subprocess.run(
                    [binary("initdb"), "--pgdata", str(data), "--username", SUPERUSER, "--auth", "trust",
                     "--encoding", "UTF8", "--locale", "C.UTF-8", "--no-sync", "--no-instructions"],
                    stdout=log, stderr=subprocess.STDOUT, check=True, timeout=120, env=self._env(), **as_postgres,
                )  # fmt: skip
                self.process = subprocess.Popen(
                    [binary("postgres"), "-D", str(data), "-k", str(sockets), "-p", str(self.port),
                     "-c", "listen_addresses=127.0.0.1", "-c", f"TimeZone={SERVER_TIME_ZONE}",
                     # A throwaway cluster: durability only costs the tests time.
                     "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                     "-c", "max_connections=200"],
                    stdout=log, stderr=subprocess.STDOUT, env=self._env(), **as_postgres,
                )  # fmt: skip
            self._wait_until_accepting()
        except BaseException:
            self.stop()
            raise
        return self

    def _run_as(self) -> dict[str, object]:
        """Popen's arguments that run the server as the postgres user when we are root.
        Not runuser: it stays as postgres's parent, does not pass on the SIGINT of a fast
        shutdown, and answers SIGTERM with SIGTERM then, two seconds later, SIGKILL."""
        if os.geteuid() != 0:
            return {}
        return {"user": SYSTEM_USER, "group": SYSTEM_USER, "extra_groups": []}

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "HOME": str(self.basedir)}

    def _wait_until_accepting(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:  # not listening, or still starting up
                time.sleep(POLL_SECS)
        raise RuntimeError(
            f"postgres did not accept connections within {STARTUP_TIMEOUT_SECS:.0f}s:\n{self.log()[-4000:]}"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def execute(self, statement: sql.Composable, database: str = "postgres") -> None:
        # CREATE/DROP DATABASE cannot run inside a transaction.
        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as connection:
            connection.execute(statement)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (``calls_<n>`` unless named); returns its name."""
        self._databases += 1
        name = name or f"calls_{self._databases}"
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting whatever a killed server process left connected."""
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: clients are disconnected
            try:
                self.process.wait(STOP_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_SECS)
        self.process = None
        if self.basedir is not None:
            shutil.rmtree(self.basedir, ignore_errors=True)
            self.basedir = None
