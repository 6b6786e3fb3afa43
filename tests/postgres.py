"""A throwaway PostgreSQL server for the tests and the benchmarks: its own cluster in a temporary folder.

Debian's postgresql package (installed by `make test`) provides initdb and pg_ctl; the server
listens on 127.0.0.1 and a socket in the folder, and is stopped and removed at the end. PostgreSQL
refuses to run as root, so as root it runs as the package's `postgres` user.
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid

from servers import free_port

USER = "assistant"


def find_bin() -> str | None:
    """The folder of initdb and pg_ctl: Debian keeps them under /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class ThrowawayPostgres:
    """Start with start(); each create_database() gives a new empty database's URL; stop() removes it all."""

    def __init__(self, durable: bool = False):
        self.bin = find_bin()
        if self.bin is None:
            raise FileNotFoundError("PostgreSQL's initdb was not found: install Debian's postgresql package")
        self.durable = durable  # False: no fsync, which tests do not need
        self.folder = tempfile.mkdtemp(prefix="assistant-postgres-")
        self.port = 0
        self.run_as: list[str] = []
        if os.getuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            self.run_as = ["runuser", "-u", "postgres", "--"]

    def start(self) -> "ThrowawayPostgres":
        data = os.path.join(self.folder, "data")
        self._run("initdb", "-D", data, "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        self.port = free_port()
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", data, "-l", os.path.join(self.folder, "server.log"), "-w", "-t", "60",
                  "-o", options, "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = "history_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        data = os.path.join(self.folder, "data")
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            self._run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([*self.run_as, os.path.join(self.bin, program), *args], capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
