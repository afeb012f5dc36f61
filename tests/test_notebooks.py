"""Chapter notebooks: every MyST source is paired with an executed .ipynb in sync with it."""

from pathlib import Path

import jupytext
import nbformat
import pytest

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"
SOURCES = sorted(p for p in CHAPTERS.glob("*.md") if p.stem != "README")
SETUP = "cfg = dlt.setup("


def test_there_are_chapters():
    assert SOURCES, "no chapters/*.md found"


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_pair_is_in_sync(source):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `make notebooks`"
    text = jupytext.read(source)
    stored = nbformat.read(ipynb, as_version=4)
    got = [(c.cell_type, c.source.strip()) for c in stored.cells]
    want = [(c.cell_type, c.source.strip()) for c in text.cells]
    assert got == want, (f"{ipynb.name} is out of sync with {source.name}: "
                         "re-run `python -m dlt_companion.book --inplace --only " f"{source.stem}`")


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_is_executed_starts_with_setup_and_checks_theory(source):
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and SETUP in code[0].source, "the first code cell must be the standard setup cell"
    assert all(c.get("execution_count") for c in code), "stored notebook is not fully executed"
    outputs = "".join(o.get("text", "") for c in code for o in c.get("outputs", [])
                      if o.get("output_type") == "stream")
    assert "✔" in outputs, "a chapter must close with at least one theory-vs-experiment assertion"
    assert not any(o.get("name") == "stderr" for c in code for o in c.get("outputs", [])), \
        "stored outputs must not contain stderr (warnings, progress bars)"
