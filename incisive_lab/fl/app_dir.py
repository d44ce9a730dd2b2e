"""The Flower app directory that ``flwr run`` submits to a SuperLink.

The app's code is this package (installed wherever the SuperLink and the SuperNodes run);
the directory holds only its ``pyproject.toml``: the components
(``incisive_lab.fl.serverapp:app``, ``incisive_lab.fl.clientapp:app``) and the default run
config — every key of :data:`incisive_lab.fl.run_config.DEFAULTS` — which a submission
overrides (``flwr run --run-config``).

Example
-------
>>> app = build_app_dir(tmp_path / "app")                       # doctest: +SKIP
>>> (app / "pyproject.toml").exists()                           # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from incisive_lab.fl.run_config import DEFAULTS

__all__ = ["APP_NAME", "build_app_dir"]

APP_NAME = "incisive-lab-fl"


def _toml_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def build_app_dir(dest: str | os.PathLike[str]) -> Path:
    """Write the Flower app directory into ``dest`` (created; files replaced); return it."""
    from incisive_lab import __version__

    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in DEFAULTS.items())
    text = f"""\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "{__version__.split('+')[0]}"
description = "INCISIVE Lab federated training: node-approved tasks on consented cohorts"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "incisive-lab"

[tool.flwr.app.components]
serverapp = "incisive_lab.fl.serverapp:app"
clientapp = "incisive_lab.fl.clientapp:app"

[tool.flwr.app.config]
{config}
"""
    (root / "pyproject.toml").write_text(text, encoding="utf-8")
    (root / "README.md").write_text(
        "# INCISIVE Lab federated app\n\nThe ServerApp and ClientApp are `incisive_lab.fl.serverapp:app` and "
        "`incisive_lab.fl.clientapp:app` (installed with incisive-lab). See docs/fl.md.\n", encoding="utf-8")
    return root
