"""Each stage's record (reports/<stage>.json) and its headline (metrics/<stage>.json, the DVC metric)."""

from __future__ import annotations

import pytest
import yaml

from chestxray import paths
from chestxray.io import read_json
from chestxray.records import HEADLINES, headline, write_record
from conftest import REPO


def test_the_headline_keeps_the_dotted_keys_nested_as_in_the_record():
    record = {"macro_f1": 0.9, "ci": {"macro_f1": {"low": 0.8, "high": 0.95}, "ece": {"low": 0.1}}, "per_class": {}}
    keys = ("macro_f1", "ci.macro_f1.low", "ci.macro_f1.high")
    assert headline(record, keys) == {"macro_f1": 0.9, "ci": {"macro_f1": {"low": 0.8, "high": 0.95}}}


def test_a_key_under_a_missing_section_is_left_out_and_an_unknown_key_fails():
    record = {"n_runs": 0, "champion": None, "leakage": {"min": None}}
    assert headline(record, ("n_runs", "champion.version", "champion.moved", "leakage.min")) == {
        "n_runs": 0,
        "leakage": {"min": None},
    }
    with pytest.raises(KeyError):
        headline(record, ("n_run",))


def test_write_record_writes_the_record_and_its_headline(tmp_path):
    record = {"groups": 12, "counts": {"test": {"COVID": 3}}, "data_version": "abc"}
    write_record("split", record, tmp_path / paths.SPLIT_JSON, tmp_path / paths.SPLIT_METRICS)
    assert read_json(tmp_path / paths.SPLIT_JSON) == record
    assert read_json(tmp_path / paths.SPLIT_METRICS) == {"groups": 12}


@pytest.mark.parametrize("stage", HEADLINES)
def test_dvc_tracks_the_headline_as_the_metric_and_the_record_as_an_output(stage):
    """dvc metrics show and dvc exp show read the headline only; the committed files agree."""
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    names = {"record": f"${{{stage.upper()}_JSON}}", "headline": f"${{{stage.upper()}_METRICS}}"}
    assert [next(iter(m)) for m in declared["metrics"]] == [names["headline"]]
    assert {names["record"]: {"cache": False}} in declared["outs"]
    record = read_json(REPO / getattr(paths, f"{stage.upper()}_JSON"))
    assert read_json(REPO / getattr(paths, f"{stage.upper()}_METRICS")) == headline(record, HEADLINES[stage])
