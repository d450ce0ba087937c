"""The edge every stage script runs through: logging, params, and one-line errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from chestxray.config import Params, load_params
from chestxray.errors import UserError


def run_stage(name: str, step: Callable[[Params], Any]) -> None:
    """Load params.yaml and run ``step``; a UserError ends the stage with one line and exit 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    try:
        step(load_params())
    except UserError as exc:
        logging.getLogger(name).error("%s", exc)
        sys.exit(1)
