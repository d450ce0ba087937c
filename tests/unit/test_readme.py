"""The README as a newcomer reads it: two set-up lines, five minutes long, every link and every
command of the package it names real. (`.ci/run` runs its second line; the pipeline tests run its
`dvc exp show` recipe.)"""

from __future__ import annotations

import re
from pathlib import Path

from chestxray.__main__ import parser

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
WORDS_PER_MINUTE = 200  # a careful reader of technical text


def test_quick_start_is_two_lines_one_runs_the_pipeline_one_the_tests():
    block = re.search(r"^## Quick start\n.*?^```bash\n(.*?)^```", README, re.M | re.S).group(1)
    lines = block.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith("&& dvc repro") and lines[1].endswith("&& pytest")


def test_the_readme_reads_in_five_minutes():
    assert len(README.split()) <= 5 * WORDS_PER_MINUTE


def test_every_relative_link_names_a_file_and_its_heading():
    for target in re.findall(r"\]\(([^)#:]+)(?:#([^)]+))?\)", README):
        path, anchor = target
        assert (REPO / path).exists(), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (REPO / path).read_text(encoding="utf-8"), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, (path, anchor)


def test_every_chestxray_command_the_readme_shows_exists():
    verbs = parser()._subparsers._group_actions[0].choices  # argparse's sub-commands
    shown = re.findall(r"^chestxray (\w+)", README, re.M)
    assert shown and set(shown) <= set(verbs)
