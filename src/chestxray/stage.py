"""The edge every stage script runs through: logging, params, signals, and one-line errors."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from chestxray.config import Params, load_params
from chestxray.errors import UserError
from chestxray.io import DISK_FULL, NOT_WRITABLE


def run_stage(name: str, step: Callable[[Params], Any]) -> None:
    """Load params.yaml and run ``step``. A UserError, a full disk or a path that cannot be written
    end the stage with one line and exit 1; SIGTERM, like Ctrl-C, raises KeyboardInterrupt (so open
    MLflow runs end KILLED) and ends it with one line and exit 128 + the signal's number."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    # MLflow logs a store error with its traceback before raising it; tracking raises it again as one line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGTERM, _interrupt)
    log = logging.getLogger(name)
    try:
        step(load_params())
    except UserError as exc:
        log.error("%s", exc)
        sys.exit(1)
    except OSError as exc:
        if exc.errno not in DISK_FULL | NOT_WRITABLE:
            raise
        log.error("%s", _describe_os_error(exc))
        sys.exit(1)
    except KeyboardInterrupt as exc:
        signum = signal.Signals(exc.args[0]) if exc.args else signal.SIGINT  # Ctrl-C raises it bare
        log.error("stopped by %s; run it again to finish (dvc repro)", signum.name)
        sys.exit(128 + signum)


def _describe_os_error(exc: OSError) -> str:
    """A full disk or an unwritable path as one line: the path, what happened, what to do."""
    path = exc.filename2 or exc.filename or f"a file under {Path.cwd()}"  # a copy's target, else the file
    if exc.errno in DISK_FULL:
        return f"{path}: {exc.strerror}; free space on its disk and run again"
    return f"{path}: {exc.strerror}; make it writable (or work in a copy you own) and run again"


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM → KeyboardInterrupt carrying the signal's number, as Ctrl-C does for SIGINT."""
    raise KeyboardInterrupt(signum)
