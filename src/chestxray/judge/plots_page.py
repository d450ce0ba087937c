"""The page `dvc plots show` and `dvc plots diff` fill (.dvc/config ``plots.html_template``): its
Vega plots draw offline, with vega, vega-lite and vega-embed inlined from the vl-convert-python
package instead of loaded from a CDN."""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

import vl_convert

from chestxray import paths
from chestxray.io import write_text

# dvc-render's plot specs declare the Vega-Lite v5 schema: compile them with the last v5 vl-convert ships
VEGA_LITE = "5.21"
# dvc-render puts each plot's <div> where {plot_divs} stands. The page has no {scripts}: that is
# where dvc-render would put its CDN <script> tags, which this page replaces with the inlined bundle.
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {generator}
    <title>DVC plots</title>
    <script>
{bundle}
    </script>
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""
log = logging.getLogger(__name__)


def generator() -> str:
    """The page's generator tag: the vl-convert-python release and Vega-Lite version its bundle is from."""
    release = metadata.version("vl-convert-python")
    return f'<meta name="generator" content="vl-convert-python {release}, Vega-Lite {VEGA_LITE}">'


def page() -> str:
    """The template: the page with vega, vega-lite and vega-embed inlined as globals (vegaEmbed)."""
    return PAGE.format(generator=generator(), bundle=vl_convert.javascript_bundle(vl_version=VEGA_LITE))


def write_page(path: Path = Path(paths.PLOTS_TEMPLATE_HTML)) -> None:
    """Write the template to ``path``, where .dvc/config's ``plots.html_template`` points, unless the
    page there is already from the same bundle (DVC keeps it between runs: ``persist``), as building
    the bundle takes seconds."""
    if path.is_file() and generator() in path.read_text(encoding="utf-8")[:1000]:
        return
    write_text(path, page())
    log.info("%s: dvc plots page with Vega-Lite %s inlined", path, VEGA_LITE)
