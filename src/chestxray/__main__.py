"""The command line: ``chestxray predict PATH...``, ``chestxray app``, ``chestxray ui``,
``chestxray promote RUN_ID`` (or ``python -m chestxray …``; see ``--help``). ``-v`` also shows TensorFlow's start-up
lines."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from chestxray import stage
from chestxray.errors import UserError
from chestxray.io import atomic_path

FORMATS = ("table", "json", "csv")  # the predict command's output formats
VERBOSE_HELP = "also show TensorFlow's start-up lines (as CHESTXRAY_VERBOSE=1 does for the stages)"


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
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    stage.configure_logging(args.verbose or stage.verbose_requested())  # before any command imports TensorFlow
    try:
        args.run(args)
    except UserError as exc:
        logging.getLogger("chestxray").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
