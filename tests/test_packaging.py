"""Project plumbing: the dependency lists agree, Binder is pinned to tested versions within the
ranges, links derive from the one repository URL, and the README's commands are what CI runs."""

import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REGENERATE = "run `make binder-lock` (after `make test` passes) to regenerate binder/environment.yml"


def _lock_module():
    spec = importlib.util.spec_from_file_location("binder_lock", ROOT / "binder" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = _lock_module()


def _name(spec: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    return LOCK.canonical(m.group(1)), m.group(2).replace(" ", "")


def pyproject_requirements(extras=LOCK.EXTRAS) -> dict:
    """Core dependencies plus the extras of the Binder/conda environment (notebooks, test);
    the others (cluster, site, browser) are opt-in for pip users."""
    data = PYPROJECT["project"]
    specs = list(data["dependencies"])
    for extra in extras:
        specs += data["optional-dependencies"][extra]
    return dict(_name(s) for s in specs)


def conda_requirements(path: Path) -> dict:
    deps = yaml.safe_load(path.read_text())["dependencies"]
    out = {}
    for d in deps:
        if isinstance(d, dict):
            out.update(_name(s) for s in d["pip"] if not s.startswith("-"))
        else:
            name, spec = _name(d)
            if name not in ("python", "pip"):
                out[name] = spec
    return out


def binder_pins() -> tuple[str, dict]:
    """(python version, {package: exact version}) from binder/environment.yml."""
    deps = yaml.safe_load((ROOT / "binder" / "environment.yml").read_text())["dependencies"]
    python = next(d.split("=", 1)[1] for d in deps if isinstance(d, str) and d.startswith("python="))
    pins = {}
    for line in next(d["pip"] for d in deps if isinstance(d, dict)):
        if line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        assert version, f"binder/environment.yml: {line!r} is not an exact pin; {REGENERATE}"
        pins[LOCK.canonical(name)] = version
    return python, pins


def test_environment_yml_lists_the_same_packages_and_ranges_as_pyproject():
    assert conda_requirements(ROOT / "environment.yml") == pyproject_requirements()


def test_every_dependency_is_pinned_for_binder_within_its_range():
    _, pins = binder_pins()
    for spec in PYPROJECT["project"]["dependencies"] + [
            s for extra in LOCK.EXTRAS for s in PYPROJECT["project"]["optional-dependencies"][extra]]:
        req = Requirement(spec)
        name = LOCK.canonical(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not pinned for Binder: {REGENERATE}"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"binder/environment.yml pins {name}=={pins[name]}, outside pyproject.toml's "
            f"{req.specifier}: {REGENERATE}")


def test_binder_python_is_the_one_the_stored_notebooks_were_executed_with():
    # JupyterLab rewrites language_info from the running kernel: another Python version on
    # Binder would mark every chapter as modified the moment it opens
    python, _ = binder_pins()
    assert Requirement(f"python{PYPROJECT['project']['requires-python']}").specifier.contains(python)
    for nb in sorted((ROOT / "chapters").glob("*.ipynb")):
        stored = json.loads(nb.read_text())["metadata"]["language_info"]["version"]
        assert stored == python, (f"{nb.name} was executed with Python {stored}, Binder runs "
                                  f"{python}: re-run `make notebooks` with Python {python} "
                                  f"or `make binder-lock` from an environment on Python {stored}")


def test_binder_torch_is_the_cpu_build():
    _, pins = binder_pins()
    assert pins["torch"].endswith("+cpu")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in \
        (ROOT / "binder" / "environment.yml").read_text()


def test_binder_post_build_sets_the_same_viewer_default_as_make_setup():
    setting = "set-default-viewer markdown myst"
    assert setting in (ROOT / "binder" / "postBuild").read_text()
    assert setting in (ROOT / "Makefile").read_text()


def test_torch_is_pinned_to_a_range_a_cpu_wheel_satisfies():
    spec = pyproject_requirements()["torch"]
    assert "<" in spec, "an open-ended torch requirement would pull a multi-GB CUDA build"


def test_readme_binder_badge_uses_the_repository_url_from_pyproject():
    from dlt_companion.book import binder_url

    badge = f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder_url('chapters')})"
    assert badge in (ROOT / "README.md").read_text(), (
        "the README's Binder badge must point at [project.urls] Repository in pyproject.toml "
        f"(a fork changes that URL): expected the line\n{badge}")


def test_binder_url_opens_a_path_in_jupyterlab():
    from dlt_companion.book import binder_url, repository_url

    assert repository_url() == PYPROJECT["project"]["urls"]["Repository"].rstrip("/")
    url = binder_url("chapters/00_initialization.md")
    assert url.startswith("https://mybinder.org/v2/gh/") and "/HEAD?urlpath=lab/tree/" in url
    assert url.endswith("chapters/00_initialization.md")


def test_readme_chapter_map_links_rendered_notebooks():
    from dlt_companion.book import chapter_map

    links = re.findall(r"\]\((chapters/[^)]+)\)", chapter_map())
    assert links, "the chapter map links no chapter"
    for link in links:
        assert link.endswith(".ipynb"), (f"README chapter map links {link}: link the executed "
                                         ".ipynb (rendered with outputs), not the .md source")
        assert (ROOT / link).exists(), f"README chapter map links a missing file {link}"


def test_ipynb_marked_generated_for_diffs():
    attributes = (ROOT / ".gitattributes").read_text()
    assert re.search(r"^\*\.ipynb\s.*linguist-generated", attributes, re.M)


@pytest.mark.parametrize("path", ["site/_config.yml", "site/index.md"])
def test_site_configuration_exists(path):
    assert (ROOT / path).exists()


def test_site_is_staged_from_notebooks_only(tmp_path):
    pytest.importorskip("mathjax", reason="the site extra is not installed (`make setup`)")
    from dlt_companion.book import ROOT as BOOK_ROOT, chapter_sources, stage_site

    stems = stage_site(BOOK_ROOT / "chapters", tmp_path / "stage")
    assert stems == [p.stem for p in chapter_sources()]
    assert not list((tmp_path / "stage" / "chapters").glob("*.md")), "paired .md must stay out"
    toc = yaml.safe_load((tmp_path / "stage" / "_toc.yml").read_text())
    assert [c["file"] for c in toc["chapters"]] == [f"chapters/{s}" for s in stems]
    config = yaml.safe_load((tmp_path / "stage" / "_config.yml").read_text())
    assert config["repository"]["url"] == PYPROJECT["project"]["urls"]["Repository"].rstrip("/")
    assert config["execute"]["execute_notebooks"] == "off"
    assert (tmp_path / "stage" / "_offline" / "mathjax" / "tex-mml-chtml.js").exists()
    assert "## Chapter map" in (tmp_path / "stage" / "index.md").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    for command in ("make test", "make book", "make lab", "make site", "make browser-test",
                    "make binder-lock"):
        assert command in readme, f"the README does not document `{command}`"
    assert "DLT_SCALE" in readme
