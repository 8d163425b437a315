"""Fixtures and helpers for the MLflow UI test (test_e2e.py::test_mlflow_ui_shows_pipeline_runs):
the MLflow UI on the store of a real pipeline run, in headless Chromium (Playwright driving
Debian's /usr/bin/chromium). `pytest -m browser` runs it alone; it skips without Chromium or
Playwright, and fails instead when NS_REQUIRE_BROWSER=1 (as CI sets it).
Screenshots go to tmp_path, and also to $NS_SCREENSHOT_DIR when set; with NS_UI_REPO=. it
opens this repository's own store instead (how docs/mlflow_*.png were made, after `dvc repro`)."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

EXPERIMENT = "e2e"  # what tests/dvcrepo.py's params name it
CHROMIUM = os.environ.get("NS_CHROMIUM", "/usr/bin/chromium")
# without the background-networking flags Chromium stalls on a network with no way out
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FIRST_LOAD_MS = 60_000  # the UI's JS bundle is large and CI has 2 cores
STEP_MS = 30_000
WIDTH = 1600
# the UI's assistant panel opens itself on a first visit and takes a third of the width
NO_ASSISTANT = ("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")


@pytest.fixture(scope="session")
def chromium():
    """Chromium's path, checked before the (session) pipeline fixture spends minutes."""
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "the playwright Python package is not installed"
    if missing is None and not Path(CHROMIUM).is_file():
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if missing:
        if os.environ.get("NS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"NS_REQUIRE_BROWSER=1 but {missing}", pytrace=False)
        pytest.skip(missing)
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(root: Path, workdir: Path, timeout: float = 120):
    """`mlflow server` on root's store; yields its URL, and stops it (with its workers) after."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # no background job runner (seven huey processes the UI does not need here), no telemetry calls
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    log = workdir / "mlflow-server.log"
    with open(log, "w") as out:  # a file, not a pipe: a chatty server must not block on a full pipe
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
             "--default-artifact-root", str(root / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                state = f"exited with {proc.returncode}" if proc.poll() is not None else f"no answer in {timeout}s"
                pytest.fail(f"mlflow server {state}:\n{log.read_text()[-4000:]}", pytrace=False)
            time.sleep(0.5)
        yield url
    finally:
        # `mlflow server` runs uvicorn as a child: stop the whole process group
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture
def store(request) -> tuple[Path, str]:
    """(repository root, MLflow experiment): the session's tiny reproduced repository, or the
    one NS_UI_REPO names (e.g. `.` after `dvc repro`, to screenshot the default pipeline)."""
    if os.environ.get("NS_UI_REPO"):
        import yaml

        root = Path(os.environ["NS_UI_REPO"]).resolve()
        return root, yaml.safe_load((root / "params.yaml").read_text())["mlflow"]["experiment"]
    return request.getfixturevalue("reproduced")[0], EXPERIMENT


@pytest.fixture
def mlflow_ui(store, tmp_path):
    root, experiment = store
    with mlflow_server(root, tmp_path) as url:
        yield url, f"sqlite:///{root}/mlflow.db", experiment


def fit_to_content(page):
    """The UI scrolls inside its panes, so a full-page screenshot would show one window:
    make the window as tall as the tallest pane's content."""
    bottom = page.evaluate("Math.max(...Array.from(document.querySelectorAll('*'),"
                           " e => e.getBoundingClientRect().top + e.scrollHeight))")
    page.set_viewport_size({"width": WIDTH, "height": int(min(max(bottom + 40, 1000), 8000))})


def screenshot(page, tmp_path: Path, name: str) -> Path:
    fit_to_content(page)
    path = tmp_path / name
    page.screenshot(path=path, full_page=True)
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n"), f"{name} is not a PNG screenshot"
    if os.environ.get("NS_SCREENSHOT_DIR"):
        out = Path(os.environ["NS_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / name)
    return path
