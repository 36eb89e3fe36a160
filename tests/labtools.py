"""A real Jupyter server (or JupyterLab) process for the sidebar's tests.

Everything it writes goes to a temporary folder (config, settings, workspaces, runtime), it
listens on a free loopback port with a known token, and it is always terminated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from conftest import ROOT, free_port, wait_for

BUILT_EXTENSION = ROOT / "de_magic" / "labextension"


class Jupyter:
    def __init__(self, tmp: Path, *, lab: bool = False, env: dict | None = None,
                 config: dict | None = None, settings: dict | None = None):
        self.tmp = tmp
        self.lab = lab
        self.port = free_port()
        self.token = "de-magic-test-token"
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = tmp / "notebooks"
        self.log_path = tmp / "jupyter.log"
        self.proc: subprocess.Popen | None = None
        self._env = env or {}
        self._config = config or {}
        self._settings = settings or {}

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> "Jupyter":
        config_dir, settings_dir = self.tmp / "config", self.tmp / "settings"
        for path in (self.root, config_dir, settings_dir, self.tmp / "workspaces", self.tmp / "runtime"):
            path.mkdir(parents=True, exist_ok=True)
        config = {"ServerApp": {"jpserver_extensions": {"de_magic": True}}}
        if self.lab and (BUILT_EXTENSION / "package.json").exists():
            # Serve the extension built in this tree, ahead of any installed (maybe older) copy.
            extensions = self.tmp / "labextensions"
            extensions.mkdir(exist_ok=True)
            (extensions / "de-magic").symlink_to(BUILT_EXTENSION, target_is_directory=True)
            config["LabApp"] = {"extra_labextensions_path": [str(extensions)]}
        for section, values in self._config.items():
            config.setdefault(section, {}).update(values)
        (config_dir / "jupyter_server_config.json").write_text(json.dumps(config))
        # The "news" toast would cover part of the window.
        settings = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}, **self._settings}
        for plugin, values in settings.items():  # "package:plugin" -> package/plugin.jupyterlab-settings
            path = settings_dir / (plugin.replace(":", "/") + ".jupyterlab-settings")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(config_dir),
            "JUPYTERLAB_SETTINGS_DIR": str(settings_dir),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.tmp / "workspaces"),
            "JUPYTER_RUNTIME_DIR": str(self.tmp / "runtime"),
            "IPYTHONDIR": str(self.tmp / "ipython"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            **self._env,
        }
        args = [sys.executable, "-m", "jupyterlab" if self.lab else "jupyter_server",
                "--no-browser", f"--port={self.port}", "--ServerApp.ip=127.0.0.1",
                f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
                "--ServerApp.port_retries=0", "--allow-root"]
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=self.tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        try:
            wait_for(self._ready, timeout=60, interval=0.1, what=f"Jupyter at {self.url}")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"Jupyter exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return self.get("/api/status", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> "Jupyter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- helpers -----------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, *, auth: bool = True, timeout: float = 15, **params) -> requests.Response:
        headers = {"Authorization": f"token {self.token}"} if auth else {}
        return requests.get(self.url + path, params=params, headers=headers, timeout=timeout)

    def post(self, path: str, body: dict, *, auth: bool = True, timeout: float = 15) -> requests.Response:
        headers = {"Authorization": f"token {self.token}"} if auth else {}
        return requests.post(self.url + path, json=body, headers=headers, timeout=timeout)

    def lab_url(self, path: str = "lab") -> str:
        return f"{self.url}/{path}?token={self.token}"


def timed(fn, *args, **kwargs):
    """``(result, seconds)`` of one call."""
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - start
