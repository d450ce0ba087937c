"""``TF_CONFIG``: the cluster of a multi-worker training and this process's place in it.

Each process of a ``train.distribute: multiworker`` training reads the standard ``TF_CONFIG``
environment variable (the same JSON ``tf.distribute.MultiWorkerMirroredStrategy`` reads): the
``cluster`` (``worker``, and optionally one ``chief``: lists of ``host:port``) and its ``task``
(``type`` and ``index``). Read without TensorFlow, so the check stage checks it before any stage
deletes its outputs. The chief (the ``chief`` task, else worker 0) is the one process that writes
the project's outputs and the MLflow run.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chestxray.errors import UserError

VARIABLE = "TF_CONFIG"
JOBS = ("chief", "worker")  # the tasks that train; MultiWorkerMirroredStrategy has no parameter servers
ADDRESS = re.compile(r"^[^\s:]+:\d{1,5}$")  # host:port
EXAMPLE = '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}'
HELP = (
    f"set {VARIABLE} on every worker to JSON like '{EXAMPLE}' (its own task index on each), start local"
    " workers with `python -m chestxray train-workers -n 2`, or set train.distribute to auto"
    " (see docs/training.md#gpus-and-more-machines)"
)


@dataclass(frozen=True)
class Task:
    """This process in the cluster: ``cluster`` maps each job to its ``host:port`` list."""

    cluster: Mapping[str, tuple[str, ...]]
    type: str
    index: int

    @property
    def is_chief(self) -> bool:
        """The ``chief`` task, or worker 0 when the cluster has no chief (TensorFlow's rule)."""
        return self.type == "chief" or (self.type == "worker" and self.index == 0 and "chief" not in self.cluster)

    @property
    def size(self) -> int:
        """How many processes train."""
        return sum(len(addresses) for addresses in self.cluster.values())

    def __str__(self) -> str:
        return f"{self.type} {self.index} of a cluster of {self.size} ({'chief' if self.is_chief else 'not the chief'})"


def read(environ: Mapping[str, str] = os.environ) -> Task:
    """``TF_CONFIG`` from ``environ``; UserError naming it and what to set when it is missing or malformed."""
    text = environ.get(VARIABLE, "").strip()
    if not text:
        raise UserError(f"{VARIABLE} is not set, but train.distribute is multiworker; {HELP}")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{VARIABLE} is not valid JSON ({exc.msg} at character {exc.pos}); {HELP}") from None
    return parse(config)


def parse(config: Any) -> Task:
    """A decoded ``TF_CONFIG`` as a Task; UserError saying what is wrong in it."""

    def wrong(what: str) -> UserError:
        return UserError(f"{VARIABLE}: {what}; {HELP}")

    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise wrong("no 'cluster' mapping")
    cluster = config["cluster"]
    if unknown := sorted(set(cluster) - set(JOBS)):
        raise wrong(f"cluster job {unknown[0]!r} is not one of {', '.join(JOBS)}")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise wrong(f"cluster.{job} must be a non-empty list of host:port")
        if bad := [a for a in addresses if not (isinstance(a, str) and ADDRESS.match(a))]:
            raise wrong(f"cluster.{job} holds {bad[0]!r}, not host:port")
    if len(cluster.get("chief", [])) > 1:
        raise wrong("cluster.chief must list one address")
    if "worker" not in cluster and "chief" not in cluster:
        raise wrong("the cluster lists no worker")
    addresses = [a for job in JOBS for a in cluster.get(job, [])]
    if twice := sorted({a for a in addresses if addresses.count(a) > 1}):
        raise wrong(f"the address {twice[0]} is listed twice")
    task = config.get("task")
    if not isinstance(task, dict):
        raise wrong("no 'task' mapping (type and index of this process)")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in cluster:
        raise wrong(f"task.type {kind!r} is not a job of the cluster ({', '.join(cluster)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[kind]):
        raise wrong(f"task.index {index!r} is not an index of cluster.{kind} (0 to {len(cluster[kind]) - 1})")
    return Task({job: tuple(a) for job, a in cluster.items()}, kind, index)


def task_for(distribute: str, environ: Mapping[str, str] = os.environ) -> Task | None:
    """This process's task when ``train.distribute`` is multiworker (``read``), else None. A
    ``TF_CONFIG`` naming a task other than the chief while ``distribute`` is not multiworker is an
    error: that process would train alone and write the project's outputs beside the chief."""
    if distribute == "multiworker":
        return read(environ)
    try:
        task = read(environ)
    except UserError:
        return None  # TF_CONFIG unset or unusable: not read when training on one process
    if not task.is_chief:
        raise UserError(
            f"{VARIABLE} makes this process {task}, but train.distribute is {distribute!r}:"
            " set train.distribute to multiworker, or unset TF_CONFIG to train on one process"
        )
    return None


def tf_config(addresses: list[str], index: int) -> str:
    """The ``TF_CONFIG`` of worker ``index`` of a cluster of workers at ``addresses`` (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})
