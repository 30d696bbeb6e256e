"""The README's benchmark tables are the ones the committed results give."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_tables_match_the_committed_results(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import readme_tables
    finally:
        sys.path.pop(0)
    assert readme_tables.main(["--check"]) == 0, capsys.readouterr().err
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "benchmarks/results/mnist1d_layer/pareto.png" in text
