"""The command line: ``chestxray predict PATH...``, ``chestxray app``, ``chestxray ui``,
``chestxray promote RUN_ID``, ``chestxray train-workers -n N -- COMMAND`` (or ``python -m chestxray …``; see
``--help``). ``-v`` also shows TensorFlow's start-up lines."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from chestxray import stage
from chestxray.errors import UserError
from chestxray.io import atomic_path

FORMATS = ("table", "json", "csv")  # the predict command's output formats
VERBOSE_HELP = "also show TensorFlow's start-up lines (as CHESTXRAY_VERBOSE=1 does for the stages)"
TRAIN_SCRIPT = Path("stages/train.py")  # what each worker but the chief runs, in the project's root
POLL = 0.5  # s between looks at the processes and the chief's port
GRACE = 60  # s the other workers get to end once the chief's command has ended, and to stop when told


def default_model() -> str:
    """``models:/<compare.registered_model>@champion`` (from ./params.yaml if there, else ``chestxray``)."""
    from chestxray.config import load_params
    from chestxray.judge.compare import CHAMPION

    name = load_params().compare.registered_model if Path("params.yaml").is_file() else "chestxray"
    return f"models:/{name}@{CHAMPION}"


def predict(args: argparse.Namespace) -> None:
    from chestxray.serve import predict, serving

    files = predict.image_files(args.paths)
    uri = args.model or default_model()
    logging.getLogger("chestxray").info("%d image(s), model %s", len(files), uri)
    text = predict.render(predict.predict_files(serving.load(uri), files), args.format)
    if args.output is None:
        sys.stdout.write(text)
        return
    with atomic_path(args.output) as tmp:
        tmp.write_text(text, encoding="utf-8")


def app(args: argparse.Namespace) -> None:
    from chestxray.serve import web

    web.serve(args.model or default_model(), args.host, args.port)


def ui(args: argparse.Namespace) -> None:
    from chestxray import tracking

    uri = tracking.tracking_uri()
    if not uri.startswith("sqlite:///"):
        raise UserError(f"MLFLOW_TRACKING_URI is a server ({uri}): open {tracking.ui_url()}")
    log = logging.getLogger("chestxray")
    log.info(
        "MLflow UI, the runs table with the headline metrics: %s", tracking.ui_url(f"http://{args.host}:{args.port}")
    )
    bin_dir = Path(sys.executable).parent  # `mlflow ui` starts uvicorn by name, from the venv's bin
    command = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    command += ["--workers", "1"]  # one person's browser
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    subprocess.run(command, env={**os.environ, "PATH": path}, check=False)


def promote(args: argparse.Namespace) -> None:
    from chestxray.config import load_params
    from chestxray.judge import compare

    cfg = load_params().compare
    compare.promote(args.run_id, cfg.model_copy(update={"registered_model": args.model or cfg.registered_model}))


def train_workers(args: argparse.Namespace) -> int:
    """Run ``args.command`` (default ``dvc repro``) as worker 0, the chief, of a cluster of
    ``args.workers`` processes on 127.0.0.1 (free ports, one ``TF_CONFIG`` each). Once the chief's
    train stage listens on its port, start the train step (``python stages/train.py``) as each other
    worker, in the same project. Wait for all; when one fails, stop the others and return its exit
    code, else 0."""
    from chestxray.learn import cluster

    log = logging.getLogger("chestxray")
    if not TRAIN_SCRIPT.is_file():
        raise UserError(f"{TRAIN_SCRIPT}: not found; run train-workers from the project's root")
    if args.workers < 2:
        raise UserError(f"-n {args.workers}: a cluster needs at least 2 workers")
    command = (args.command[1:] if args.command[:1] == ["--"] else args.command) or ["dvc", "repro"]
    addresses = [f"127.0.0.1:{port}" for port in free_ports(args.workers)]
    signal.signal(signal.SIGTERM, _interrupt)
    workers = {0: _start(command, cluster.tf_config(addresses, 0))}
    log.info("worker 0, the chief, at %s: %s (pid %d)", addresses[0], " ".join(command), workers[0].pid)
    chief_ended = None
    try:
        while True:
            if len(workers) == 1 and workers[0].poll() is None and listening(addresses[0]):
                for i in range(1, args.workers):
                    workers[i] = _start([sys.executable, str(TRAIN_SCRIPT)], cluster.tf_config(addresses, i))
                    log.info("worker %d at %s: %s (pid %d)", i, addresses[i], TRAIN_SCRIPT, workers[i].pid)
            codes = {i: p.poll() for i, p in workers.items()}
            if failed := [i for i, code in codes.items() if code]:
                log.error("worker %d exited with %d; stopping the others", failed[0], codes[failed[0]])
                return codes[failed[0]]
            if None not in codes.values():
                if len(workers) == 1:
                    log.warning(
                        "no other worker started: the command ran no multi-worker training (train up to date,"
                        " or train.distribute is not multiworker in params.yaml)"
                    )
                return 0
            if codes[0] is not None:
                chief_ended = chief_ended or time.monotonic()
                if time.monotonic() - chief_ended > GRACE:
                    log.error("a worker still runs %d s after the chief's command ended; stopping it", GRACE)
                    return 1
            time.sleep(POLL)
    except KeyboardInterrupt as exc:
        signum = signal.Signals(exc.args[0]) if exc.args else signal.SIGINT
        log.error("stopped by %s; stopping the workers", signum.name)
        return 128 + signum
    finally:
        _stop(list(workers.values()))


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def listening(address: str) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def _start(command: Sequence[str], tf_config: str) -> subprocess.Popen:
    """``command`` with ``TF_CONFIG`` in its own process group (so it can be stopped with its children)."""
    return subprocess.Popen(command, env={**os.environ, "TF_CONFIG": tf_config}, start_new_session=True)


def _stop(processes: Sequence[subprocess.Popen]) -> None:
    """SIGTERM the process groups of those still running (a stage ends its MLflow run KILLED), then
    SIGKILL those still running ``GRACE`` s later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        running = [p for p in processes if p.poll() is None]
        for p in running:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.killpg(p.pid, sig)
        deadline = time.monotonic() + GRACE
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            time.sleep(POLL)


def _interrupt(signum: int, _frame: object) -> None:
    """SIGTERM → KeyboardInterrupt carrying the signal's number, as Ctrl-C does for SIGINT."""
    raise KeyboardInterrupt(signum)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="chestxray", description=__doc__)
    root.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    verbose = argparse.ArgumentParser(add_help=False)  # -v after the command too, not resetting one before it
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    commands = root.add_subparsers(dest="command", required=True)
    p = commands.add_parser("predict", parents=[verbose], help="classify image files or folders")
    p.add_argument("paths", nargs="+", help="image files, or folders searched recursively for images")
    p.add_argument("--model", help="MLflow model URI (default: models:/<compare.registered_model>@champion)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--output", type=Path, help="write here instead of standard output")
    p.set_defaults(run=predict)
    p = commands.add_parser(
        "app", parents=[verbose], help="serve a web page to upload an X-ray and see probabilities and Grad-CAM"
    )
    p.add_argument("--model", help="MLflow model URI (default: models:/<compare.registered_model>@champion)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.set_defaults(run=app)
    p = commands.add_parser(
        "ui", parents=[verbose], help="start the MLflow UI on the project's store, at its runs table"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    p.set_defaults(run=ui)
    p = commands.add_parser(
        "promote",
        parents=[verbose],
        help="make a run's logged model the champion, whatever its data version (compare never does that)",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="the MLflow run whose logged model 'model' becomes champion")
    p.add_argument("--model", metavar="NAME", help="registered model name (default: compare.registered_model)")
    p.set_defaults(run=promote)
    p = commands.add_parser(
        "train-workers",
        parents=[verbose],
        help="train on N processes of this machine (train.distribute: multiworker): the command as the chief,"
        " the train step as each other worker",
    )
    p.add_argument("-n", "--workers", type=int, default=2, help="processes that train (default: 2)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="after --: the chief's command (default: dvc repro)")
    p.set_defaults(run=train_workers)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    stage.configure_logging(args.verbose or stage.verbose_requested())  # before any command imports TensorFlow
    try:
        return args.run(args) or 0
    except UserError as exc:
        logging.getLogger("chestxray").error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
