"""The edge every stage script runs through: logging, params, signals, and one-line errors.

Stage scripts import this module first (``from chestxray import stage`` sorts before the step's
module): importing it quiets TensorFlow's start-up lines before anything imports TensorFlow, unless
``$CHESTXRAY_VERBOSE`` is set (``CHESTXRAY_VERBOSE=1 dvc repro``)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from chestxray.config import Params, load_params
from chestxray.errors import UserError
from chestxray.io import DISK_FULL, NOT_WRITABLE

VERBOSE = "CHESTXRAY_VERBOSE"  # set to anything but 0: the libraries' own start-up lines show too
TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"  # TensorFlow's C++ log: 0 all, 1 no INFO; read once, at import


def quiet_libraries(verbose: bool) -> None:
    """Unless ``verbose``, hide TensorFlow's start-up lines (its C++ INFO log: the CPU features it was
    built for, oneDNN, and absl's "All log messages before absl::InitializeLog()" that precedes them);
    its warnings and errors still show, and a level already set in the environment is kept. Verbose
    shows every line. TensorFlow reads the level when imported: call this before that."""
    if verbose:
        os.environ[TF_LOG_LEVEL] = "0"
    else:
        os.environ.setdefault(TF_LOG_LEVEL, "1")


def verbose_requested() -> bool:
    """Whether ``$CHESTXRAY_VERBOSE`` asks for the libraries' own lines (DVC passes only the environment)."""
    return os.environ.get(VERBOSE, "0").strip() not in ("", "0")


def configure_logging(verbose: bool) -> None:
    """One format for the package's and the libraries' log lines, on standard error."""
    quiet_libraries(verbose)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TensorFlow gives its logger a handler of its own when imported before logging is configured (as
    # in a stage): each of its warnings would show twice, once in each format
    logging.getLogger("tensorflow").handlers.clear()
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


quiet_libraries(verbose_requested())  # on import: before the stage script's step module imports TensorFlow


def run_stage(name: str, step: Callable[[Params], Any]) -> None:
    """Load params.yaml and run ``step``. A UserError, a full disk or a path that cannot be written
    end the stage with one line and exit 1; SIGTERM, like Ctrl-C, raises KeyboardInterrupt (so open
    MLflow runs end KILLED) and ends it with one line and exit 128 + the signal's number."""
    configure_logging(verbose_requested())
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
