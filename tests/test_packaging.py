"""Project plumbing: the dependency lists agree, and the README's commands are what CI runs."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# extras that only pip users opt into (not part of the Binder/conda environment)
OPTIONAL_ONLY = {"cluster"}


def _name(spec: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def pyproject_requirements() -> dict:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(data["dependencies"])
    for name, extra in data["optional-dependencies"].items():
        if name not in OPTIONAL_ONLY:
            specs += extra
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


def test_environment_yml_lists_the_same_packages_and_ranges_as_pyproject():
    assert conda_requirements(ROOT / "environment.yml") == pyproject_requirements()


def test_binder_environment_is_the_root_environment():
    assert (ROOT / "binder" / "environment.yml").read_text() == (ROOT / "environment.yml").read_text()


def test_torch_is_pinned_to_a_range_a_cpu_wheel_satisfies():
    spec = pyproject_requirements()["torch"]
    assert "<" in spec, "an open-ended torch requirement would pull a multi-GB CUDA build"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "make test" in readme and "make book" in readme and "make lab" in readme
    assert "DLT_SCALE" in readme
