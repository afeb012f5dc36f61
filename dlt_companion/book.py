"""Execute the chapter notebooks headless and build the static site: the book's main job.

    python -m dlt_companion.book              # run every chapter into build/, then build the site
    python -m dlt_companion.book --only 00    # chapters whose file name contains "00"
    python -m dlt_companion.book --inplace    # refresh the outputs stored in chapters/*.ipynb
    python -m dlt_companion.book --site       # only build the site, from chapters/*.ipynb as stored
    python -m dlt_companion.book --sync       # rewrite every pair as JupyterLab would save it

The paired MyST markdown file (``chapters/NN_name.md``) is the source of each chapter. It
is read the way JupyterLab reads it (jupytext's contents manager, rooted at the repository
so that ``[tool.jupytext]`` in ``pyproject.toml`` applies: inputs from the ``.md``, cell ids
from the ``.ipynb``), executed with nbclient in ``chapters/`` on the ``python3`` kernel of
this environment, and written as

* ``build/notebooks/NN_name.ipynb`` -- the executed notebook,
* ``build/figures/NN_name-K.png``   -- every figure it drew,
* ``build/site/``                   -- the static site of every chapter (``index.html``),

followed by a summary table (chapter, seconds, checks passed) printed and saved to
``build/summary.md``. A *check* is a theory-vs-experiment assertion printed by
:func:`dlt_companion.stats.assert_agree` (a line starting with ✔).

``--inplace`` saves the executed notebook back through the same contents manager, so
``chapters/NN_name.ipynb`` and ``chapters/NN_name.md`` are exactly what JupyterLab writes
when a reader saves the chapter (opening a chapter then leaves it clean). Those stored
outputs are what nbval compares against, so it always runs in quick mode with progress
bars off.

The site is a Jupyter Book 1.x build (configuration in ``site/``) of the executed notebooks:
an index with the README's chapter map, navigation, figures, math rendered by a bundled
MathJax 3 (no network needed), exercise solutions folded, a Binder launch button per chapter.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
SITE = ROOT / "site"
CHECK_MARK = "✔"
KERNEL = "python3"  # the kernel JupyterLab starts for the chapters (their stored kernelspec)


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


# --- the repository's address --------------------------------------------------------------

def repository_url() -> str:
    """``[project.urls] Repository`` from ``pyproject.toml``: the one place it is written."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return data["project"]["urls"]["Repository"].rstrip("/")


def binder_url(path: str = "chapters") -> str:
    """mybinder.org link that opens ``path`` (a folder or file of the repository) in JupyterLab."""
    url = repository_url()
    prefix = "https://github.com/"
    if not url.startswith(prefix):
        raise ValueError(f"Binder links are built for GitHub repositories; [project.urls] "
                         f"Repository is {url!r}")
    return f"https://mybinder.org/v2/gh/{url[len(prefix):]}/HEAD?urlpath=lab/tree/{path}"


# --- reading and writing chapters as JupyterLab does ---------------------------------------

def contents_manager(root: Path = ROOT):
    """jupytext's contents manager rooted at ``root``: what JupyterLab uses to open and save."""
    from jupytext import TextFileContentsManager

    return TextFileContentsManager(root_dir=str(root))


def _relative(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def load(source: Path, root: Path = ROOT):
    """The chapter as JupyterLab opens it: inputs from the ``.md``, ids/outputs from the pair."""
    return contents_manager(root).get(_relative(source, root))["content"]


def save(nb, source: Path, root: Path = ROOT) -> None:
    """Save the chapter as JupyterLab does: writes the ``.md`` and its paired ``.ipynb``."""
    contents_manager(root).save({"type": "notebook", "format": "json", "content": nb},
                                _relative(source, root))


def kernelspec(name: str = KERNEL) -> dict:
    """The notebook metadata a JupyterLab session writes for kernel ``name``."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(name)
    return {"display_name": spec.display_name, "language": spec.language, "name": name}


def _kernel_config(folder: str):
    """Kernels talk over IPC sockets in ``folder``: local-only, and no warning about TCP
    without encryption printed once per chapter (TCP where IPC is unavailable)."""
    from traitlets.config import Config

    if os.name == "nt":
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(folder, "kernel")}})


def execute(source: Path, timeout: int | None = None, kernel_dir: str | None = None):
    """Read a chapter as JupyterLab does and execute it in ``chapters/``.

    ``timeout`` is per cell, in seconds: 30 minutes in quick mode (a hung cell, not a slow
    one), none in full mode, where one book-size ensemble may run for an hour on a CPU.
    """
    from nbclient import NotebookClient

    from .notebook import scale

    if timeout is None and scale() != "full":
        timeout = 1800
    nb = load(source)
    nb.metadata["kernelspec"] = kernelspec()
    for cell in nb.cells:  # no per-run timestamps: a re-run changes only what the cells print
        cell.metadata.pop("execution", None)
    with tempfile.TemporaryDirectory(prefix="dlt-kernel-", dir=kernel_dir) as folder:
        client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, record_timing=False,
                                config=_kernel_config(folder),
                                resources={"metadata": {"path": str(source.parent)}})
        client.execute()
    return nb


def sync(only: str | None = None) -> list[Path]:
    """Rewrite every chapter pair exactly as JupyterLab would save it (no execution)."""
    sources = chapter_sources(only)
    for src in sources:
        save(load(src), src)
    return sources


def run(only: str | None = None, inplace: bool = False, out: Path = ROOT / "build",
        site: bool = True) -> list[Result]:
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
        errors = [o for c in (nb.cells if nb is not None else []) for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        if errors:  # e.g. a figure that fails to render raises after its cell has finished
            status, nb = "FAILED", None
            print(f"{src.stem}: an error output was recorded: {errors[0].get('ename')}: "
                  f"{errors[0].get('evalue')}", file=sys.stderr)
        checks = count_checks(nb) if nb is not None else 0
        results.append(Result(src.stem, seconds, checks, status))
        if nb is None:
            continue
        if inplace:
            save(nb, src)
        else:
            _write_build(nb, src.stem, out)
    table = summary(results)
    print(table)
    if not inplace:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(table + "\n", encoding="utf-8")
        failed = [r.chapter for r in results if r.status != "ok"]
        if site and only is None and failed:
            print(f"site not built: {', '.join(failed)} failed", file=sys.stderr)
        elif site and only is None:
            build_site(out / "notebooks", out / "site")
    return results


def _write_build(nb, stem: str, out: Path) -> None:
    import nbformat

    for sub in ("notebooks", "figures"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / "notebooks" / f"{stem}.ipynb")
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


# --- the static site -----------------------------------------------------------------------

def chapter_map() -> str:
    """The README's "Chapter map" section: its heading, then from the table on (the lines
    between them speak of the README itself)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Chapter map")
    end = text.find("\n## ", start + 1)
    heading, _, body = text[start:end if end >= 0 else None].partition("\n")
    table = body.find("\n|")
    body = (body[table:] if table >= 0 else body).rstrip()
    # documents that are not chapters (the semester plan, chapters/README.md) are not on the
    # site: link them on the repository's host instead
    body = re.sub(r"\]\((chapters/[^)]+\.md)\)",
                  lambda m: f"]({repository_url()}/blob/HEAD/{m.group(1)})", body)
    return heading + "\n" + body + "\n"


def stage_site(notebooks: Path, stage: Path) -> list[str]:
    """Assemble the Jupyter Book source folder ``stage`` from ``site/`` and the executed
    notebooks in ``notebooks`` (one per chapter source); returns the chapter names."""
    import yaml

    stems = [src.stem for src in chapter_sources()]
    missing = [s for s in stems if not (notebooks / f"{s}.ipynb").exists()]
    if missing:
        raise SystemExit(f"no executed notebook for {', '.join(missing)} in {notebooks}")
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "chapters").mkdir(parents=True)
    for stem in stems:  # only the .ipynb: the paired .md would collide with it
        shutil.copy2(notebooks / f"{stem}.ipynb", stage / "chapters" / f"{stem}.ipynb")
    config = yaml.safe_load((SITE / "_config.yml").read_text(encoding="utf-8"))
    config["repository"]["url"] = repository_url()
    (stage / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
                                       encoding="utf-8")
    toc = {"format": "jb-book", "root": "index",
           "chapters": [{"file": f"chapters/{stem}"} for stem in stems]}
    (stage / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False), encoding="utf-8")
    index = (SITE / "index.md").read_text(encoding="utf-8").rstrip() + "\n\n" + chapter_map()
    (stage / "index.md").write_text(index, encoding="utf-8")
    # MathJax 3 for offline math, served from the site's _static/ (staged as _offline/: Jupyter
    # Book would load every .js of a folder named _static into each page)
    import mathjax  # the django-static-mathjax distribution: MathJax's es5 build, no Django

    shutil.copytree(Path(mathjax.__file__).parent / "static" / "mathjax" / "es5",
                    stage / "_offline" / "mathjax")
    return stems


def build_site(notebooks: Path = CHAPTERS, out: Path = ROOT / "build" / "site") -> Path:
    """Build the static site from executed notebooks into ``out`` (``out/index.html``).

    Nothing is executed: the pages show the outputs stored in ``notebooks``.
    """
    t0 = time.perf_counter()
    stage = out.parent / "site-src"
    stems = stage_site(notebooks, stage)
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe), "build", str(stage), "--builder", "html", "--warningiserror",
           "--keep-going", "--quiet"]
    print(f"▶ site: {len(stems)} chapters from {notebooks} ...", flush=True)
    done = subprocess.run(cmd, cwd=stage, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-5000:] + done.stderr[-5000:])
        raise SystemExit(f"the site build failed: {' '.join(cmd)}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.move(str(stage / "_build" / "html"), str(out))
    print(f"site: {out / 'index.html'} ({time.perf_counter() - t0:.1f} s)")
    return out / "index.html"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlt_companion.book", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run chapters whose file name contains this text")
    parser.add_argument("--inplace", action="store_true",
                        help="store quick-mode outputs in chapters/*.ipynb (the nbval reference)")
    parser.add_argument("--out", type=Path, default=ROOT / "build", help="build folder")
    parser.add_argument("--no-site", action="store_true", help="do not build the site after a run")
    parser.add_argument("--site", action="store_true",
                        help="only build the site, from the notebooks stored in chapters/")
    parser.add_argument("--sync", action="store_true",
                        help="rewrite every chapter pair as JupyterLab saves it (no execution)")
    args = parser.parse_args(argv)
    if args.site:
        build_site(CHAPTERS, args.out / "site")
        return 0
    if args.sync:
        for src in sync(args.only):
            print(f"synced {src.relative_to(ROOT)} and {src.with_suffix('.ipynb').name}")
        return 0
    results = run(args.only, args.inplace, args.out, site=not args.no_site)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
