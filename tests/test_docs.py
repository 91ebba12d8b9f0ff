"""The README's measured figures point at result files: every one it names must be in the tree.

A figure whose file is missing cannot be checked by anyone, so it is as good as unmeasured. Last session's
figures were lost this way: ``benchmarks/results/`` was git-ignored and the new files were never added.
"""

from __future__ import annotations

import re
from itertools import product
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def expand(name: str) -> list[str]:
    """``a_{b,c}.json`` → ``a_b.json``, ``a_c.json`` (the README's shorthand for a family of files)."""
    parts = re.split(r"\{([^}]*)\}", name)
    choices = [[part] if i % 2 == 0 else part.split(",") for i, part in enumerate(parts)]
    return ["".join(pick) for pick in product(*choices)]


def cited_results(text: str, scripts: list[str]) -> set[str]:
    """Result files cited in ``text``: a ``.json`` or ``.log`` name that starts with a benchmark script's name."""
    names = set()
    for token in re.findall(r"[\w{},.-]+\.(?:json|log)", text):
        for name in expand(token.rsplit("/", 1)[-1]):
            if any(name.split(".")[0] == script or name.startswith(f"{script}_")
                   for script in scripts):
                names.add(name)
    return names


def test_cited_names_are_expanded_and_matched_to_benchmark_scripts() -> None:
    text = "see `results/chain_{a,b}.partial.json`, results/fleet.log, report.json, chains.json and `x/int8.json`"
    assert cited_results(text, ["chain", "fleet", "int8"]) == {"chain_a.partial.json", "chain_b.partial.json",
                                                                "fleet.log", "int8.json"}


def test_every_result_file_the_readme_cites_is_in_the_tree() -> None:
    scripts = sorted(path.stem for path in (ROOT / "benchmarks").glob("*.py") if path.stem != "common")
    cited = cited_results((ROOT / "README.md").read_text(), scripts)
    assert cited, "the README cites no benchmark result: the pattern no longer matches how it cites them"
    missing = sorted(name for name in cited if not (RESULTS / name).is_file())
    assert not missing, f"the README cites result files that are not in benchmarks/results/: {missing}"
