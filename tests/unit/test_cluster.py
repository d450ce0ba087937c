"""TF_CONFIG for train.distribute: multiworker: read without TensorFlow, every malformed value refused in
one line naming TF_CONFIG and what to set, the chief told apart, and the check stage refusing a missing
one before any stage deletes its outputs."""

from __future__ import annotations

import json

import pytest

from chestxray import paths
from chestxray.errors import UserError
from chestxray.learn import cluster
from chestxray.preflight import check_params
from conftest import make_params

TWO = ["127.0.0.1:40001", "127.0.0.1:40002"]


def env(config: object) -> dict[str, str]:
    return {"TF_CONFIG": config if isinstance(config, str) else json.dumps(config)}


def test_the_launcher_s_tf_config_reads_back_as_each_worker():
    tasks = [cluster.read(env(cluster.tf_config(TWO, i))) for i in range(2)]
    assert [(t.type, t.index, t.size, t.is_chief) for t in tasks] == [("worker", 0, 2, True), ("worker", 1, 2, False)]
    assert tasks[0].cluster == {"worker": tuple(TWO)}
    assert str(tasks[1]) == "worker 1 of a cluster of 2 (not the chief)"


@pytest.mark.parametrize(
    ("task", "chief"),
    [
        ({"type": "chief", "index": 0}, True),
        ({"type": "worker", "index": 0}, False),  # a chief task exists: worker 0 is an ordinary worker
        ({"type": "worker", "index": 1}, False),
    ],
)
def test_a_chief_task_is_the_chief_and_worker_0_is_not(task, chief):
    config = {"cluster": {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}, "task": task}
    found = cluster.read(env(config))
    assert found.is_chief is chief and found.size == 3


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "TF_CONFIG is not set, but train.distribute is multiworker"),
        ("{cluster:", "TF_CONFIG is not valid JSON (Expecting property name enclosed in double quotes at character 1)"),
        ({"task": {"type": "worker", "index": 0}}, "TF_CONFIG: no 'cluster' mapping"),
        ({"cluster": {"ps": TWO}, "task": {}}, "TF_CONFIG: cluster job 'ps' is not one of chief, worker"),
        ({"cluster": {"worker": []}, "task": {}}, "TF_CONFIG: cluster.worker must be a non-empty list of host:port"),
        ({"cluster": {"worker": ["h0"]}, "task": {}}, "TF_CONFIG: cluster.worker holds 'h0', not host:port"),
        ({"cluster": {"chief": TWO}, "task": {}}, "TF_CONFIG: cluster.chief must list one address"),
        (
            {"cluster": {"worker": [TWO[0], TWO[0]]}, "task": {}},
            "TF_CONFIG: the address 127.0.0.1:40001 is listed twice",
        ),
        ({"cluster": {"worker": TWO}}, "TF_CONFIG: no 'task' mapping (type and index of this process)"),
        (
            {"cluster": {"worker": TWO}, "task": {"type": "chief", "index": 0}},
            "TF_CONFIG: task.type 'chief' is not a job of the cluster (worker)",
        ),
        (
            {"cluster": {"worker": TWO}, "task": {"type": "worker", "index": 2}},
            "TF_CONFIG: task.index 2 is not an index of cluster.worker (0 to 1)",
        ),
        (
            {"cluster": {"worker": TWO}, "task": {"type": "worker", "index": "1"}},
            "TF_CONFIG: task.index '1' is not an index of cluster.worker (0 to 1)",
        ),
    ],
)
def test_a_missing_or_malformed_tf_config_says_what_to_set(value, message):
    with pytest.raises(UserError) as raised:
        cluster.read(env(value))
    text = str(raised.value)
    assert text.startswith(message + '; set TF_CONFIG on every worker to JSON like \'{"cluster"')
    assert "python -m chestxray train-workers -n 2" in text and "docs/training.md#gpus-and-more-machines" in text


def test_tf_config_is_read_only_for_multiworker_and_never_lets_a_second_worker_train_alone():
    assert cluster.task_for("auto", {}) is None
    assert cluster.task_for("auto", env("not json")) is None  # not read when training on one process
    assert cluster.task_for("none", env(cluster.tf_config(TWO, 0))) is None  # the chief of a cluster: trains alone
    assert cluster.task_for("multiworker", env(cluster.tf_config(TWO, 1))).index == 1
    with pytest.raises(UserError, match=r"^TF_CONFIG makes this process worker 1 of a cluster of 2 \(not the chief\)"):
        cluster.task_for("auto", env(cluster.tf_config(TWO, 1)))  # it would write the project's outputs too


def test_the_check_stage_refuses_multiworker_without_tf_config(tmp_path, monkeypatch):
    params = make_params(**{"train.distribute": "multiworker"})
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match=r"^TF_CONFIG is not set, but train\.distribute is multiworker"):
        check_params(params, tmp_path)
    assert not (tmp_path / paths.PARAMS_OK).exists()
    monkeypatch.setenv("TF_CONFIG", cluster.tf_config(TWO, 0))
    check_params(params, tmp_path)
    assert (tmp_path / paths.PARAMS_OK).exists()
