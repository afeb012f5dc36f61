"""Chapter notebooks: every MyST source is paired with an executed .ipynb, stored exactly as
JupyterLab writes it, so that opening a chapter leaves it unmodified and saving changes nothing."""

import difflib
import shutil
from pathlib import Path

import nbformat
import pytest

from dlt_companion import book

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
SOURCES = book.chapter_sources()
SETUP = "cfg = dlt.setup("
FIX = "re-run `make notebooks` (or `.venv/bin/python -m dlt_companion.book --inplace --only {}`)"


def test_there_are_chapters():
    assert SOURCES, "no chapters/*.md found"


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_pair_is_in_sync(source):
    import jupytext

    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `make notebooks`"
    text = jupytext.read(source)
    stored = nbformat.read(ipynb, as_version=4)
    got = [(c.cell_type, c.source.strip()) for c in stored.cells]
    want = [(c.cell_type, c.source.strip()) for c in text.cells]
    assert got == want, f"{ipynb.name} is out of sync with {source.name}: " + FIX.format(source.stem)


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_saving_the_chapter_in_jupyterlab_rewrites_nothing(source, tmp_path):
    # a copy of the pair under a copy of pyproject.toml ([tool.jupytext]), opened and saved
    # through jupytext's contents manager: the code path of JupyterLab's open and save
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "chapters").mkdir()
    for suffix in (".md", ".ipynb"):
        shutil.copy2(source.with_suffix(suffix), tmp_path / "chapters" / (source.stem + suffix))
    copy = tmp_path / "chapters" / source.name
    book.save(book.load(copy, root=tmp_path), copy, root=tmp_path)
    for suffix in (".md", ".ipynb"):
        before = source.with_suffix(suffix).read_text(encoding="utf-8")
        after = copy.with_suffix(suffix).read_text(encoding="utf-8")
        diff = "".join(list(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                                 "stored", "saved by JupyterLab"))[:40])
        assert before == after, (f"{source.stem}{suffix} is not in the form JupyterLab saves: "
                                 f"`make sync` rewrites it (no execution), or "
                                 f"{FIX.format(source.stem)}\n{diff}")


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_stored_kernel_is_the_kernel_jupyterlab_starts(source):
    # a different kernelspec (e.g. display_name "Python 3") is rewritten by JupyterLab when
    # the kernel starts, which marks the chapter modified as soon as it is opened
    want = book.kernelspec()
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert nb.metadata.kernelspec == want, FIX.format(source.stem)
    assert "jupytext_version" not in source.read_text(encoding="utf-8").split("---")[1], \
        "the .md header must not record the jupytext version ([tool.jupytext] filters it)"


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
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, (f"a stored output is an error ({errors[0].get('ename') if errors else ''}): "
                        "a figure that fails to render raises after its cell has run")


def test_headless_kernels_use_ipc_and_print_no_tcp_warning(tmp_path):
    import subprocess
    import sys

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from ipykernel.kernelapp import IPKernelApp\nprint(IPKernelApp.instance().transport, 6 * 7)")])
    script = (
        "import sys, nbformat, tempfile\n"
        "from nbclient import NotebookClient\n"
        "from dlt_companion import book\n"
        "nb = nbformat.reads(sys.stdin.read(), as_version=4)\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    c = NotebookClient(nb, kernel_name=book.KERNEL, config=book._kernel_config(d))\n"
        "    c.execute()\n"
        "print(nb.cells[0].outputs[0]['text'].strip())\n")
    done = subprocess.run([sys.executable, "-c", script], input=nbformat.writes(nb),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ipc", "42"]
    assert "without encryption" not in done.stderr + done.stdout
