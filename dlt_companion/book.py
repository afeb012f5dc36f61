"""Execute the chapter notebooks headless: the book's main job.

    python -m dlt_companion.book              # run every chapter into build/, print a summary
    python -m dlt_companion.book --only 00    # chapters whose file name contains "00"
    python -m dlt_companion.book --inplace    # refresh the outputs stored in chapters/*.ipynb

The paired MyST markdown file (``chapters/NN_name.md``) is the source of each chapter;
it is read with jupytext, executed with nbclient in the ``chapters/`` folder, and
written as

* ``build/notebooks/NN_name.ipynb`` -- the executed notebook,
* ``build/html/NN_name.html``       -- a static page of it,
* ``build/figures/NN_name-K.png``   -- every figure it drew,

followed by a summary table (chapter, seconds, checks passed) printed and saved to
``build/summary.md``. A *check* is a theory-vs-experiment assertion printed by
:func:`dlt_companion.stats.assert_agree` (a line starting with ✔).

``--inplace`` writes the executed notebook back to ``chapters/NN_name.ipynb``: those
stored outputs are what nbval compares against, so it always runs in quick mode with
progress bars off.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
CHECK_MARK = "✔"


@dataclass
class Result:
    chapter: str
    seconds: float
    checks: int
    status: str


def chapter_sources(only: str | None = None) -> list[Path]:
    """The chapter sources (``chapters/*.md``) in book order, optionally filtered."""
    paths = sorted(p for p in CHAPTERS.glob("*.md") if p.name[0].isalnum() and p.stem != "README")
    return [p for p in paths if only is None or only in p.stem]


def count_checks(nb) -> int:
    """Number of ✔ lines printed to stdout by the notebook's cells."""
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                n += sum(line.startswith(CHECK_MARK) for line in out.get("text", "").splitlines())
    return n


def _figures(nb):
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png")
            if png:
                yield base64.b64decode(png)


def execute(source: Path, timeout: int | None = None):
    """Read a chapter's MyST source with jupytext and execute it in ``chapters/``.

    ``timeout`` is per cell, in seconds: 30 minutes in quick mode (a hung cell, not a slow
    one), none in full mode, where one book-size ensemble may run for an hour on a CPU.
    """
    from .notebook import scale

    if timeout is None and scale() != "full":
        timeout = 1800
    import jupytext
    from nbclient import NotebookClient

    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(source.parent)}})
    client.execute()
    return nb


def run(only: str | None = None, inplace: bool = False, out: Path = ROOT / "build") -> list[Result]:
    import jupytext
    from nbclient.exceptions import CellExecutionError

    # the kernel must be this interpreter (the project's environment), whatever PATH says
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    if inplace:
        os.environ["DLT_SCALE"] = "quick"
        os.environ["TQDM_DISABLE"] = "1"
    sources = chapter_sources(only)
    if not sources:
        raise SystemExit(f"no chapter sources match {only!r} in {CHAPTERS}")
    results = []
    for src in sources:
        print(f"▶ {src.stem} ...", flush=True)
        t0 = time.perf_counter()
        status = "ok"
        try:
            nb = execute(src)
        except CellExecutionError as exc:
            status, nb = "FAILED", None
            print(str(exc)[-3000:], file=sys.stderr)
        seconds = time.perf_counter() - t0
        checks = count_checks(nb) if nb is not None else 0
        results.append(Result(src.stem, seconds, checks, status))
        if nb is None:
            continue
        if inplace:
            jupytext.write(nb, src.with_suffix(".ipynb"), fmt="ipynb")
        else:
            _write_build(nb, src.stem, out)
    table = summary(results)
    print(table)
    if not inplace:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(table + "\n", encoding="utf-8")
    return results


def _write_build(nb, stem: str, out: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    for sub in ("notebooks", "html", "figures"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / "notebooks" / f"{stem}.ipynb")
    html, _ = HTMLExporter().from_notebook_node(nb)
    (out / "html" / f"{stem}.html").write_text(html, encoding="utf-8")
    for k, png in enumerate(_figures(nb), start=1):
        (out / "figures" / f"{stem}-{k}.png").write_bytes(png)


def summary(results: list[Result]) -> str:
    """A markdown table: chapter, seconds, checks passed, status."""
    from .notebook import scale

    lines = [f"Book run (DLT_SCALE={scale()}):", "",
             "| chapter | seconds | checks passed | status |", "|---|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r.chapter} | {r.seconds:.1f} | {r.checks} | {r.status} |")
    total = sum(r.seconds for r in results)
    lines.append(f"| **total** | {total:.1f} | {sum(r.checks for r in results)} | "
                 f"{'ok' if all(r.status == 'ok' for r in results) else 'FAILED'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlt_companion.book", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run chapters whose file name contains this text")
    parser.add_argument("--inplace", action="store_true",
                        help="store quick-mode outputs in chapters/*.ipynb (the nbval reference)")
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="build folder")
    args = parser.parse_args(argv)
    results = run(args.only, args.inplace, args.out)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
