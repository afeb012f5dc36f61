"""What a reader sees, checked in a real browser (pytest + Playwright + Chromium).

* ``make lab`` on the repository: a chapter's ``.md`` opened by URL is a notebook (cells,
  stored figures, rendered math), its tab is not marked modified once the kernel is up,
  running the setup cell prints the ``DLT_SCALE=quick`` line, and no chapter file changes.
* The static site: the index links every chapter; a chapter page shows its figures, every
  formula rendered by the bundled MathJax with the network switched off, folded solutions
  and its Binder launch link.

The browser is ``DLT_CHROMIUM`` (path to a Chromium executable, e.g. the one
``tests/fetch_chromium.sh`` unpacks) or Playwright's own. Without one these tests skip and say
why; ``make browser-test`` sets ``DLT_REQUIRE_BROWSER=1`` so that they fail instead.
Screenshots and the counts land in ``build/browser-test/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from dlt_companion import book

pytestmark = pytest.mark.browser

ROOT = book.ROOT
CHAPTER = "00_initialization"  # the chapter opened in JupyterLab and on the site
ARTIFACTS = ROOT / "build" / "browser-test"
REPORT: dict = {}


def _unavailable(reason: str):
    if os.environ.get("DLT_REQUIRE_BROWSER", "") not in ("", "0"):
        pytest.fail(f"no browser for the browser test: {reason}")
    pytest.skip(f"browser test skipped: {reason} (see README, `make browser-test`)")


@pytest.fixture(scope="module")
def chromium():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (`make browser-test` installs it)")
    exe = os.environ.get("DLT_CHROMIUM") or None
    if exe and not os.access(exe, os.X_OK):
        _unavailable(f"DLT_CHROMIUM={exe} is not an executable file")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe)
        except Error as exc:
            _unavailable("no Chromium found: set DLT_CHROMIUM to a Chromium executable or run "
                         "`.venv/bin/playwright install chromium` "
                         f"({str(exc).strip().splitlines()[0]})")
        REPORT["browser"] = f"Chromium {browser.version}" + (f" ({exe})" if exe else "")
        yield browser
        browser.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "report.json").write_text(json.dumps(REPORT, indent=1) + "\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chapter_files() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ROOT / "chapters").iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def lab(chromium, tmp_path_factory):
    """``make lab`` on the repository, with a private settings folder (autosave off, so the
    executed cell is never written back) and a token; yields the base URL and the token."""
    home = tmp_path_factory.mktemp("lab")
    settings = home / "settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
    port, token = _free_port(), "dlt-browser-test"
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"))
    env.pop("DLT_SCALE", None)  # a reader's session: the default size
    args = f"--no-browser --port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token}"
    log = open(home / "lab.log", "w")
    server = subprocess.Popen(["make", "--no-print-directory", "lab", f"LAB_ARGS={args}"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    before = _chapter_files()
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("`make lab` did not start:\n" + (home / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
    assert _chapter_files() == before, "opening and running a chapter in JupyterLab changed files"


def _stored(stem: str) -> dict:
    nb = nbformat.read(ROOT / "chapters" / f"{stem}.ipynb", as_version=4)
    return {
        "cells": len(nb.cells),
        "figures": sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])),
        "hide_input": sum("hide-input" in c.metadata.get("tags", []) for c in nb.cells),
    }


def test_chapter_md_opens_in_jupyterlab_as_a_clean_notebook_and_runs(chromium, lab):
    base, token = lab
    want = _stored(CHAPTER)
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{base}/lab/tree/chapters/{CHAPTER}.md?token={token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=120_000)
    # the kernel has started and answered (it rewrites kernelspec/language_info if they differ)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
        ".some(e => /Python 3 \\(ipykernel\\) \\| Idle/.test(e.textContent))", timeout=120_000)
    page.wait_for_timeout(2000)
    notebook = page.locator(".jp-NotebookPanel:visible .jp-Notebook")
    cells = notebook.locator(".jp-Cell").count()
    images = notebook.locator(".jp-OutputArea-output img").count()
    math = notebook.locator("mjx-container").count()
    tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")
    title = tab.inner_text().strip()
    dirty = "jp-mod-dirty" in (tab.get_attribute("class") or "")
    kernel = page.locator(".jp-NotebookPanel:visible .jp-Toolbar-kernelName").inner_text().strip()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lab-opened.png"))
    REPORT["lab"] = {"url": f"/lab/tree/chapters/{CHAPTER}.md", "tab": title, "cells": cells,
                     "stored_cells": want["cells"], "images": images,
                     "stored_figures": want["figures"], "math_elements": math,
                     "kernel": kernel, "dirty_after_kernel_start": dirty}
    assert title == f"{CHAPTER}.md"
    assert cells == want["cells"] > 0, "the .md did not open as the full notebook"
    assert images == want["figures"] > 0, "stored figures are not shown"
    assert math > 0, "no math rendered"
    assert kernel == book.kernelspec()["display_name"]
    assert not dirty, "opening the chapter marked it modified"

    # run the setup cell (the first code cell): its old output node is replaced by a new one
    setup = notebook.locator(".jp-CodeCell").first
    setup.locator(".jp-OutputArea-output").first.evaluate("e => e.dataset.stale = '1'")
    setup.locator(".jp-InputPrompt").first.click()
    page.keyboard.press("Shift+Enter")
    fresh = setup.locator(".jp-OutputArea-output:not([data-stale])")
    fresh.first.wait_for(timeout=120_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
        ".some(e => /\\| Idle/.test(e.textContent))", timeout=120_000)
    text = fresh.first.inner_text()
    page.screenshot(path=str(ARTIFACTS / "lab-setup-cell.png"))
    REPORT["lab"]["setup_cell_output"] = text.strip()
    assert text.startswith("DLT_SCALE=quick"), text
    page.close()


@pytest.fixture(scope="module")
def site(chromium, tmp_path_factory):
    """The static site built from the stored notebooks, as `make site` builds it."""
    pytest.importorskip("jupyter_book", reason="the site extra is not installed (`make setup`)")
    out = tmp_path_factory.mktemp("site") / "site"
    t0 = time.perf_counter()
    index = book.build_site(book.CHAPTERS, out)
    REPORT["site_build_seconds"] = round(time.perf_counter() - t0, 1)
    return index


def _offline_page(chromium):
    """A page with the network switched off, and the list of requests that failed."""
    context = chromium.new_context(viewport={"width": 1300, "height": 900}, offline=True)
    page = context.new_page()
    failed = []
    page.on("requestfailed", lambda r: None if r.url == "about:blank" else failed.append(r.url))
    return context, page, failed


def test_site_index_links_every_chapter(chromium, site):
    context, page, failed = _offline_page(chromium)
    page.goto(site.as_uri())
    for src in book.chapter_sources():
        link = page.locator(f"article a[href$='chapters/{src.stem}.html']")
        assert link.count() >= 1, f"the index does not link {src.stem}"
    nav = page.locator("nav.bd-links a[href*='chapters/']").count()
    page.screenshot(path=str(ARTIFACTS / "site-index.png"), full_page=False)
    REPORT["site_index"] = {"chapter_links_in_map": len(book.chapter_sources()),
                            "navigation_links": nav}
    assert nav == len(book.chapter_sources())
    assert not failed, f"requests failed offline: {failed}"
    context.close()


def test_site_chapter_has_figures_rendered_math_solutions_folded_and_binder_link(chromium, site):
    want = _stored(CHAPTER)
    context, page, failed = _offline_page(chromium)
    page.goto((site.parent / "chapters" / f"{CHAPTER}.html").as_uri())
    # every formula of the page typeset by MathJax 3 (no network: the site's own copy)
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                           timeout=60_000)
    page.evaluate("() => MathJax.startup.promise")
    page.wait_for_function(
        "() => { const m = [...document.querySelectorAll('span.math.notranslate, div.math.notranslate')];"
        " return m.length > 0 && m.every(e => e.querySelector('mjx-container')); }",
        timeout=120_000)
    math = page.locator("span.math.notranslate, div.math.notranslate").count()
    images = page.evaluate("[...document.querySelectorAll('article img')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length")
    folded = page.locator(".tag_hide-input").count()
    binder = page.evaluate("[...document.querySelectorAll('a')].map(a => a.href)"
                           ".filter(h => h.startsWith('https://mybinder.org/'))")
    page.locator("article h2").nth(1).scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "site-chapter.png"))
    REPORT["site_chapter"] = {"page": f"chapters/{CHAPTER}.html", "images": images,
                              "stored_figures": want["figures"], "math_rendered": math,
                              "hide_input_cells": folded, "binder": binder}
    assert images == want["figures"] > 0
    assert math > 0
    assert folded == want["hide_input"]
    if folded:
        assert not page.locator(".tag_hide-input .cell_input").first.is_visible(), \
            "a solution is not folded"
    assert binder == [book.binder_url(f"chapters/{CHAPTER}.ipynb")]
    assert not failed, f"requests failed offline: {failed}"
    context.close()
