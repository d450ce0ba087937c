"""The check stage: every param checked before any stage runs, so a bad value costs no output.

DVC deletes a stage's outputs before it runs the stage, so a value found bad inside the stage
would already have cost the previous results. Every stage depends on ``paths.PARAMS_OK``, which
this stage writes, always with the same bytes, only once the whole of params.yaml passed: the
types and ranges of ``config``, and the names the registries keep (``model``, ``data.layout``,
``compare.metric``), the data sources' own settings (``data.*``, each ``evaluate.external`` entry)
and, for ``train.distribute: multiworker``, the ``TF_CONFIG`` of the process that runs it (the chief's).
"""

from __future__ import annotations

import logging
from pathlib import Path

from chestxray import paths
from chestxray.config import Params
from chestxray.data import layouts, sources
from chestxray.io import write_text
from chestxray.judge import metrics
from chestxray.learn import backbones, cluster

log = logging.getLogger(__name__)

MARK = "params.yaml passed the check stage; every stage depends on this file (see src/chestxray/preflight.py)\n"


def check_params(params: Params, root: Path = Path(".")) -> None:
    """Check what ``config`` cannot check alone (registry names, the data source), then write the mark."""
    backbones.settings(params)
    if params.data.layout != "auto":
        layouts.get(params.data.layout)
    metrics.get(params.compare.metric)
    cluster.task_for(params.train.distribute)  # multiworker: TF_CONFIG set and well-formed
    sources.check_source(params.data)
    for entry in params.evaluate.external:  # the audit stage reads them: a bad entry must not cost its outputs
        sources.check_external(entry, root)
        if entry.layout != "auto":
            layouts.get(entry.layout, f"{entry.key}: layout")
    write_text(root / paths.PARAMS_OK, MARK)
    log.info("params.yaml: every value is valid")
