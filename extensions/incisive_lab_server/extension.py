"""The server extension: refusing handlers first, the start-up check, then the gateway."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import List, Set, Unicode, default

from .config import (
    DEFAULT_LOCKED_PLUGINS,
    DEFAULT_SANDBOX_PROVISIONERS,
    UnsafeServerConfig,
    check_csp,
    check_routes,
    check_server,
)
from .refusal import REFUSED_PATTERNS

__all__ = ["IncisiveLabServer"]

_GATEWAY_MODULE = f"{__package__}.gateway"


def _gateway_function(name: str) -> Callable[..., Any] | None:
    """``gateway.<name>``, or ``None`` while the gateway module is not there.

    Only the absence of that very module is tolerated (and logged loudly by the caller);
    any other import error is a bug and propagates.
    """
    try:
        module = importlib.import_module(_GATEWAY_MODULE)
    except ModuleNotFoundError as e:
        if e.name != _GATEWAY_MODULE:
            raise
        return None
    function: Callable[..., Any] = getattr(module, name)
    return function


class IncisiveLabServer(ExtensionApp):
    """INCISIVE Lab's single-user server extension.

    At load it

    1. routes every download path to a refusing handler ahead of every other route
       (:mod:`incisive_lab_server.refusal`);
    2. checks the server's effective settings and routes and exits with every problem named
       when one would reopen a download path (:mod:`incisive_lab_server.config`);
    3. starts the kernel gateway (``incisive_lab_server.gateway.start_gateway``).

    On shutdown it stops the gateway. Its settings are read from the same read-only
    configuration directory as the server's (``JUPYTER_CONFIG_DIR``).
    """

    name = "incisive_lab_server"

    sandbox_provisioners = Set(
        Unicode(),
        config=True,
        help="""Kernel provisioner names that start kernels inside the sandbox. Every allowed
        kernelspec and KernelProvisionerFactory.default_provisioner_name must be one of them,
        or the server does not start. Default: {"incisive-sandbox"} (kernels/).""",
    )

    @default("sandbox_provisioners")
    def _sandbox_provisioners_default(self) -> set[str]:
        return set(DEFAULT_SANDBOX_PROVISIONERS)

    locked_plugins = List(
        Unicode(),
        config=True,
        help="""JupyterLab plugin ids that must be disabled and locked in
        labconfig/page_config.json when JupyterLab is enabled (checked at start; the page
        config itself does the disabling). Default: the download, export and
        open-in-new-browser-tab plugins.""",
    )

    @default("locked_plugins")
    def _locked_plugins_default(self) -> list[str]:
        return list(DEFAULT_LOCKED_PLUGINS)

    def initialize_handlers(self) -> None:
        """The refusing handlers, routed before the server's own and other extensions'."""
        self.handlers.extend(REFUSED_PATTERNS)

    def initialize(self) -> None:  # type: ignore[override]
        """Add the handlers, check the server, start the gateway; exit if the check fails."""
        super().initialize()
        serverapp = self.serverapp
        assert serverapp is not None
        problems = check_server(
            serverapp,
            sandbox_provisioners=self.sandbox_provisioners,
            locked_plugins=self.locked_plugins,
        )
        problems += check_routes(serverapp.web_app, serverapp.base_url)
        if problems:
            error = UnsafeServerConfig(problems)
            serverapp.log.critical("%s", error)
            # SystemExit passes through the extension manager, which would log and swallow
            # an ordinary exception unless reraise_server_extension_failures is set.
            raise SystemExit(str(error))
        serverapp.log.info(
            "incisive_lab_server: downloads refused (/files/, base64 contents, nbconvert, "
            "/view/), terminals off, kernels sandboxed"
        )
        self._start_gateway()

    def _start_gateway(self) -> None:
        start = _gateway_function("start_gateway")
        if start is None:
            self.log.error(
                "incisive_lab_server: %s is not installed: NO GATEWAY, kernels have no door "
                "to the broker or the nodes",
                _GATEWAY_MODULE,
            )
            return
        start(self.serverapp)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Check the routes and the page's security policy again once every extension has
        loaded (one could have changed them); stop the server if wrong."""
        problems = check_routes(serverapp.web_app, serverapp.base_url)
        problems += check_csp(serverapp.web_app.settings.get("headers", {}))
        if problems:
            serverapp.log.critical("%s", UnsafeServerConfig(problems))
            serverapp.stop()

    async def stop_extension(self) -> None:
        """Stop the gateway."""
        stop = _gateway_function("stop_gateway")
        if stop is not None:
            result = stop()
            if inspect.isawaitable(result):
                await result
