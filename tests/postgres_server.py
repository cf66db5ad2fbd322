"""A throwaway PostgreSQL server for the tests, from the Debian `postgresql` package: initdb in a
temporary directory, a server on a free loopback port, a user with a password and a database;
stopped and removed afterwards, and by a watchdog when the test session is killed.

The server runs as the database's own system user (`postgres`) when the tests run as root (the
server refuses root, and so should we), and as the current user otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BIN_GLOB = "/usr/lib/postgresql/*/bin"
SYSTEM_USER = "postgres"  # the Debian package's system user, which owns the server as root
SUPERUSER = "postgres"  # the cluster's superuser role, reached only through its socket
USER, DATABASE = "nnlab", "nnlab"
WAIT_S = "30"  # pg_ctl -t: how long start and stop may take


class Unavailable(RuntimeError):
    """The PostgreSQL package (or its system user, as root) is not installed here."""


def server_bin() -> Path:
    """The bin/ directory of the newest PostgreSQL version installed, with initdb and pg_ctl."""
    found = [p for p in Path("/").glob(BIN_GLOB.lstrip("/")) if (p / "initdb").is_file()]
    if not found:
        raise Unavailable(f"no {BIN_GLOB}/initdb: apt-get install postgresql")
    return max(found, key=lambda p: tuple(int(x) for x in p.parent.name.split(".") if x.isdigit()))


def run_as() -> list[str]:
    """The command prefix that runs a server program as a non-root user: none unless root."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise Unavailable(f"running as root, and there is no '{SYSTEM_USER}' user") from None
    return ["runuser", "-u", SYSTEM_USER, "--"]


def check_available() -> None:
    """Unavailable, saying what is missing, unless a server can be started here."""
    server_bin()
    run_as()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    root: Path  # the temporary directory: data/, the socket, the log
    bin: Path
    prefix: list[str]  # runs a server program as its owner
    port: int = 0
    password: str = field(default_factory=lambda: "pw-" + secrets.token_urlsafe(16))
    watchdog: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *command: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [*self.prefix, str(self.bin / command[0]), *command[1:]],
            cwd=self.root,  # the server's user may not enter the tests' working directory
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode:
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    def _ctl(self, *arguments: str) -> list[str]:
        """pg_ctl's arguments (after its name) for this server, waiting up to WAIT_S."""
        return ["-D", str(self.root / "data"), "-w", "-t", WAIT_S, *arguments]

    def start(self) -> None:
        self._run(
            *("initdb", "-D", str(self.root / "data"), "-U", SUPERUSER, "-E", "UTF8"),
            *("--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"),
        )
        # Watching before the server starts: a test session killed at any moment leaves none.
        stop = [*self.prefix, str(self.bin / "pg_ctl"), *self._ctl("-m", "immediate", "stop")]
        self.watchdog = _watch(stop, self.root)
        for attempt in range(3):  # the free port may be taken before the server binds it
            self.port = free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
            log = str(self.root / "server.log")
            try:
                self._run("pg_ctl", *self._ctl("-l", log, "-o", options, "start"))
                break
            except RuntimeError:
                if attempt == 2:
                    raise RuntimeError(Path(log).read_text()[-2000:]) from None
        sql = (
            f"CREATE ROLE {USER} LOGIN PASSWORD '{self.password}';\n"
            f"CREATE DATABASE {DATABASE} OWNER {USER};\n"
        )
        socket_at = ("-h", str(self.root), "-p", str(self.port))  # as the superuser, by trust
        psql = ("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *socket_at, "-U", SUPERUSER)
        self._run(*psql, "-d", "postgres", "-f", "-", stdin=sql)  # stdin: no password in argv

    def stop(self) -> None:
        """Stop the server (fast, then immediate) and remove its directory."""
        with contextlib.suppress(Exception):
            if (self.root / "data" / "postmaster.pid").exists():
                try:
                    self._run("pg_ctl", *self._ctl("-m", "fast", "stop"))
                except RuntimeError:
                    self._run("pg_ctl", *self._ctl("-m", "immediate", "stop"))
        shutil.rmtree(self.root, ignore_errors=True)
        if self.watchdog is not None:
            self.watchdog.stdin.close()  # type: ignore[union-attr]  # EOF: it finds nothing left
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.watchdog.wait(timeout=10)


def _watch(stop: list[str], root: Path) -> subprocess.Popen:
    """A process that stops the server and removes its directory once this one is gone, however
    it ends (even SIGKILL): it waits for EOF on a pipe only this process holds open."""
    return subprocess.Popen(
        [sys.executable, __file__, json.dumps({"stop": stop, "root": str(root)})],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C or killpg of the test session does not reach it
    )


@contextlib.contextmanager
def postgres_server() -> Iterator[Server]:
    """A started server, stopped and removed on leaving (also when the body raises)."""
    prefix = run_as()
    bin_dir = server_bin()
    root = Path(tempfile.mkdtemp(prefix="nnlab-pg-"))
    if prefix:  # root: the server's user owns its directory (/tmp lets it in)
        shutil.chown(root, SYSTEM_USER, SYSTEM_USER)
    server = Server(root=root, bin=bin_dir, prefix=prefix)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _watchdog(spec: str) -> None:
    job = json.loads(spec)
    sys.stdin.read()  # returns at EOF: when the test process closed the pipe or died
    if Path(job["root"], "data", "postmaster.pid").exists():
        subprocess.run(job["stop"], cwd=job["root"], capture_output=True, timeout=60)
    shutil.rmtree(job["root"], ignore_errors=True)


if __name__ == "__main__":
    _watchdog(sys.argv[1])
