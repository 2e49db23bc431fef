"""Headless Chromium for tests of the web page: Debian's ``chromium`` and ``chromium-driver``,
driven by selenium.

:func:`ensure_chromium` installs the two packages where they are missing (CI runs as root);
where that is impossible the test fails, saying what to install: a page nobody tested in a
browser is not a pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PACKAGES = ["chromium", "chromium-driver"]
#: This machine's network is closed: without these Chromium stalls on its own requests
#: (updates, sync, QUIC probes) before it loads the page.
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1000",
]  # fmt: skip


def _present() -> bool:
    return all(os.access(p, os.X_OK) for p in (CHROMIUM, CHROMEDRIVER))


def ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver if missing; fail the test if it cannot."""
    if _present():
        return
    how = f"apt-get install -y --no-install-recommends {' '.join(PACKAGES)}"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"the browser tests need Chromium and its driver: run `{how}` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Wait for another apt (a second test process, the host's own) rather than fail on its lock.
    args = ["apt-get", "-o", "DPkg::Lock::Timeout=600", *how.split()[1:]]
    run = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1200)
    if run.returncode != 0:  # the package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600)
        run = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1200)
    if not _present():
        pytest.fail(
            f"the browser tests need Chromium and its driver, and `{how}` failed "
            f"(status {run.returncode}):\n{run.stderr[-2000:]}"
        )


def start_browser(downloads: Path):
    """A headless Chromium with a fresh profile, saving downloads into ``downloads``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="kotta-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.kotta_profile = profile
    return driver


def stop_browser(driver) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(driver.kotta_profile, ignore_errors=True)
