"""Progress bars: a text bar, without warnings, where ipywidgets is missing in a Jupyter kernel."""

import subprocess
import sys

# What tqdm.auto sees in a Jupyter kernel of a core-only install: ipykernel's shell is
# loaded, ipywidgets cannot be imported. Every warning is shown (on stderr).
KERNEL_WITHOUT_WIDGETS = """
import sys, types, warnings
warnings.simplefilter("always")
sys.modules["ipywidgets"] = None
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")
import IPython
from dlt_companion.progress import progress, tqdm
print(sum(progress(range(5), desc="loop")), any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__))
"""


def test_kernel_without_ipywidgets_gets_a_text_bar_and_no_warning():
    done = subprocess.run([sys.executable, "-c", KERNEL_WITHOUT_WIDGETS],
                          capture_output=True, text=True, env={"TQDM_DISABLE": "0", "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10", "False"]  # summed, and not a widget bar
    assert "IProgress" not in done.stderr


def test_disabled_bar_still_iterates(monkeypatch):
    from dlt_companion.progress import progress

    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert list(progress(range(3), desc="x")) == [0, 1, 2]
