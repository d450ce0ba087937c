"""The engines a team shares, started for real on 127.0.0.1 by the tests (docs/team.md): an S3 API
server (moto's server mode: the real S3 protocol over HTTP, objects kept in its memory), a PostgreSQL
server (Debian's `postgresql`, a throwaway cluster in a temp folder) and an MLflow tracking server on
both (PostgreSQL backend store, artifacts in the object store, served through the tracking server).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chestxray.__main__ import free_ports
from conftest import wait_until_up

BIN = Path(sys.executable).parent
# Credentials of the test object store (moto accepts any); a team's live in the usual AWS variables
# or ~/.aws, never in the repository
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "team-test", "AWS_SECRET_ACCESS_KEY": "team-test-secret"}
S3_REGION = "us-east-1"


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


@dataclass
class ObjectStore:
    """An S3 API endpoint on 127.0.0.1 and the variables a client of it needs."""

    endpoint: str
    env: dict[str, str] = field(default_factory=dict)

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (with the real boto3 client); its ``s3://`` URL."""
        self._client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``."""
        pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def read(self, bucket: str, key: str) -> bytes:
        """The bytes of object ``key`` in ``bucket``."""
        return self._client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def _client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=S3_REGION, **_boto_keys())


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


@contextlib.contextmanager
def server(
    command: list[str],
    health: str,
    what: str,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 180,
) -> Iterator[subprocess.Popen]:
    """Run ``command`` with its output in ``log`` until ``health`` (a URL) answers 200, within ``timeout``
    seconds (else fail naming ``what``, with the log's end); terminate it on exit (kill after 30 s)."""
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        wait_until_up(health, process, what, lambda: _tail(log), timeout=timeout)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@contextlib.contextmanager
def object_store(workdir: Path) -> Iterator[ObjectStore]:
    """moto's S3 server on a free port of 127.0.0.1, stopped on exit."""
    port = free_ports(1)[0]
    endpoint = f"http://127.0.0.1:{port}"
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with server(command, f"{endpoint}/moto-api/", "moto_server", workdir / "moto.log", timeout=60):
        yield ObjectStore(endpoint, {**S3_CREDENTIALS, "AWS_DEFAULT_REGION": S3_REGION})


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"{name} not found: install Debian's postgresql (apt-get install postgresql; .ci/run does)")
    return found


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1 with database ``mlflow``; its URI.

    PostgreSQL refuses to run as root: as root, the cluster belongs to Debian's ``postgres`` user, in a
    folder of its own under the system's temp folder (pytest's are private to root); removed on exit."""
    data, port = Path(tempfile.mkdtemp(prefix="chestxray-pg-")), free_ports(1)[0]
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    log = data / "server.log"

    def pg(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:1])} failed ({done.returncode}): {done.stderr}\n{_tail(log)}")

    pg(postgres_bin("initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    pg(
        postgres_bin("pg_ctl"),
        "-D",
        str(data / "db"),
        "-o",
        f"-h 127.0.0.1 -p {port} -k {data}",
        "-l",
        str(log),
        "-w",
        "start",
    )
    try:
        pg(postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        pg(postgres_bin("pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def tracking_server(workdir: Path, backend: str, store: ObjectStore, artifacts: str) -> Iterator[str]:
    """``mlflow server`` on ``backend`` with artifacts in ``artifacts`` (an s3:// URL of ``store``),
    served through the server: clients need its URL only, no S3 credentials. Yields the URL."""
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **store.env, "MLFLOW_S3_ENDPOINT_URL": store.endpoint}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend, "--artifacts-destination", artifacts]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    with server(command, f"{url}/health", "mlflow server", workdir / "mlflow-server.log", env, workdir):
        yield url
