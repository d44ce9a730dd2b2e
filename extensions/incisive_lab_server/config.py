"""The start-up check: the server runs with the settings the refusal relies on, or not at all.

The refusal is configuration (``extensions/jupyter-config/jupyter_server_config.json`` and
``labconfig/page_config.json``, read-only, outside the workspace) plus code. A setting that
is missing or weakened would quietly reopen a download path, so the extension reads back the
*effective* values from the running server and refuses to start when one is wrong
(:func:`check_server` lists every problem; the extension exits with all of them).

What is checked:

- ``ServerApp.contents_manager_class`` is :class:`~incisive_lab_server.contents.RefusingContentsManager`
  (or a subclass) and its ``files_handler_class`` refuses;
- terminals are off (``ServerApp.terminals_enabled = False``);
- every handler needs a login (``ServerApp.allow_unauthenticated_access = False``);
- kernels: ``KernelSpecManager.allowed_kernelspecs`` is set, ``ensure_native_kernel`` is off,
  every allowed kernelspec and the default provisioner
  (``KernelProvisionerFactory.default_provisioner_name``) are sandboxed ones;
- no directory the server reads configuration, kernelspecs, data, Lab settings or Python
  modules from lies inside the workspace (``root_dir``): the user can write there;
- JupyterLab, when enabled: the download and export plugins are disabled *and* locked in the
  page config, and the extension manager is read-only;
- the pages' ``Content-Security-Policy`` (``ServerApp.tornado_settings.headers``) lets the
  page load images, scripts, frames and connections from the server's own origin only (plus
  ``data:``/``blob:``), so an output or a Markdown image cannot make the browser send data to
  another host (:func:`check_csp`);
- the router sends each refused path (:data:`~incisive_lab_server.refusal.REFUSED_SAMPLES`) to
  a refusing handler.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from jupyter_core.paths import jupyter_config_path, jupyter_path
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from .contents import RefusingCheckpoints, RefusingContentsManager
from .refusal import REFUSED_SAMPLES, RefusedFiles, is_refusing_handler

__all__ = [
    "DEFAULT_LOCKED_PLUGINS",
    "DEFAULT_SANDBOX_PROVISIONERS",
    "UnsafeServerConfig",
    "check_csp",
    "check_routes",
    "check_server",
]

#: CSP sources that keep the page's requests on the server's own origin.
_LOCAL_SOURCES = frozenset(
    {"'self'", "'none'", "'unsafe-inline'", "'unsafe-eval'", "data:", "blob:"}
)
#: Directives that do not fall back to ``default-src`` and so must be given.
_REQUIRED_DIRECTIVES = ("default-src", "form-action", "base-uri")

#: Kernel provisioners that start kernels inside the sandbox (``kernels/``).
DEFAULT_SANDBOX_PROVISIONERS = frozenset({"incisive-sandbox"})

#: JupyterLab plugins that download or export, or open a file's download URL.
DEFAULT_LOCKED_PLUGINS = (
    "@jupyterlab/docmanager-extension:download",
    "@jupyterlab/filebrowser-extension:download",
    "@jupyterlab/notebook-extension:export",
    "@jupyterlab/docmanager-extension:open-browser-tab",
    "@jupyterlab/filebrowser-extension:open-browser-tab",
)


class UnsafeServerConfig(RuntimeError):
    """The server's settings would reopen a download path; it must not start.

    Parameters
    ----------
    problems
        One sentence per problem, each naming the setting and the value it needs.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            "incisive_lab_server refuses to start: the server's settings would reopen a "
            f"download path or let the user change them:\n{lines}"
        )


def _qualname(obj: object) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _inside(path: str, root: str) -> bool:
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _lab_app(serverapp: Any) -> Any | None:
    """The JupyterLab extension app when JupyterLab is enabled, else ``None``."""
    manager = getattr(serverapp, "extension_manager", None)
    if manager is None:
        return None
    for name, apps in manager.extension_apps.items():
        if name == "jupyterlab":
            for app in apps:
                return app
    return None


def check_server(
    serverapp: Any,
    *,
    sandbox_provisioners: Iterable[str] = DEFAULT_SANDBOX_PROVISIONERS,
    locked_plugins: Iterable[str] = DEFAULT_LOCKED_PLUGINS,
) -> list[str]:
    """Every way the running server's settings fall short of the refusal, as sentences.

    Parameters
    ----------
    serverapp
        The initialised :class:`jupyter_server.serverapp.ServerApp`.
    sandbox_provisioners
        Names of the kernel provisioners that sandbox kernels.
    locked_plugins
        JupyterLab plugin ids that must be disabled and locked when JupyterLab is enabled.

    Returns
    -------
    list of str
        Empty when the server may start.
    """
    problems: list[str] = []
    sandboxed = set(sandbox_provisioners)

    cm = serverapp.contents_manager
    if not isinstance(cm, RefusingContentsManager):
        problems.append(
            f"ServerApp.contents_manager_class is {_qualname(cm)}; it must be "
            f"{_qualname(RefusingContentsManager)} (base64 and binary reads refused)"
        )
    checkpoints = getattr(cm, "checkpoints", None)
    if not isinstance(checkpoints, RefusingCheckpoints):
        problems.append(
            f"ContentsManager.checkpoints_class is {_qualname(checkpoints)}; it must be "
            f"{_qualname(RefusingCheckpoints)} (checkpoints confined to the workspace)"
        )
    handler = getattr(cm, "files_handler_class", None)
    if not (isinstance(handler, type) and issubclass(handler, RefusedFiles)):
        problems.append(
            f"ContentsManager.files_handler_class is {_qualname(handler)}; it must be "
            f"{_qualname(RefusedFiles)} (/files/ refused)"
        )

    if serverapp.terminals_enabled:
        problems.append("ServerApp.terminals_enabled is True; it must be False (no terminals)")
    if serverapp.allow_unauthenticated_access:
        problems.append(
            "ServerApp.allow_unauthenticated_access is True; it must be False "
            "(every handler needs a login)"
        )

    root = os.path.realpath(serverapp.root_dir)
    problems.extend(_check_kernels(serverapp, sandboxed, root))
    problems.extend(_check_paths(serverapp, root))

    problems.extend(check_csp(serverapp.web_app.settings.get("headers", {})))

    lab = _lab_app(serverapp)
    if lab is not None:
        problems.extend(_check_lab(lab, tuple(locked_plugins), root))

    return problems


def _check_kernels(serverapp: Any, sandboxed: set[str], root: str) -> list[str]:
    from jupyter_client.kernelspec import NoSuchKernel
    from jupyter_client.provisioning import KernelProvisionerFactory

    problems: list[str] = []
    ksm = serverapp.kernel_spec_manager
    allowed = set(ksm.allowed_kernelspecs)
    if not allowed:
        problems.append(
            "KernelSpecManager.allowed_kernelspecs is empty (every installed kernel allowed); "
            'it must name only sandboxed kernels, e.g. ["incisive"]'
        )
    if ksm.ensure_native_kernel:
        problems.append(
            "KernelSpecManager.ensure_native_kernel is True; it must be False "
            "(the native kernel is not sandboxed)"
        )
    factory = KernelProvisionerFactory.instance(parent=serverapp)
    default = factory.default_provisioner_name
    if default not in sandboxed:
        problems.append(
            f"KernelProvisionerFactory.default_provisioner_name is {default!r}; it must be "
            f"one of {sorted(sandboxed)} (a kernelspec naming no provisioner gets it)"
        )
    for kernel_dir in ksm.kernel_dirs:
        if _inside(kernel_dir, root):
            problems.append(
                f"kernelspecs are read from {kernel_dir!r}, inside the workspace {root!r}; "
                "set JUPYTER_PATH, JUPYTER_DATA_DIR and IPYTHONDIR (IPython's kernels/) "
                "outside it"
            )
    for name in sorted(allowed):
        try:
            spec = ksm.get_kernel_spec(name)
        except NoSuchKernel:
            serverapp.log.warning(
                "incisive_lab_server: allowed kernelspec %r is not installed; no kernel of "
                "that name can start",
                name,
            )
            continue
        meta = (spec.metadata or {}).get("kernel_provisioner") or {}
        provisioner = meta.get("provisioner_name", default)
        if provisioner not in sandboxed:
            problems.append(
                f"kernelspec {name!r} ({spec.resource_dir}) uses provisioner {provisioner!r}; "
                f"allowed kernels must use one of {sorted(sandboxed)}"
            )
        if _inside(spec.resource_dir, root):
            problems.append(
                f"kernelspec {name!r} is read from {spec.resource_dir!r}, inside the workspace"
            )
    return problems


def _check_paths(serverapp: Any, root: str) -> list[str]:
    problems: list[str] = []
    labelled: list[tuple[str, str]] = []
    labelled += [("configuration", p) for p in serverapp.config_file_paths]
    labelled += [("configuration", p) for p in jupyter_config_path()]
    labelled += [("data (kernelspecs, Lab extensions)", p) for p in jupyter_path()]
    labelled += [("runtime", serverapp.runtime_dir)]
    # "" is the working directory; other relative entries are import hooks' names
    # (editable installs), not directories.
    labelled += [
        ("Python modules (sys.path)", p or os.getcwd())
        for p in sys.path
        if not p or os.path.isabs(p)
    ]
    seen: set[tuple[str, str]] = set()
    for label, path in labelled:
        if (label, path) in seen:
            continue
        seen.add((label, path))
        if _inside(path, root):
            problems.append(
                f"the server reads {label} from {path!r}, inside the workspace {root!r}, "
                "where the user can write; point JUPYTER_CONFIG_DIR, JUPYTER_PATH, "
                "JUPYTER_DATA_DIR, JUPYTER_RUNTIME_DIR and the working directory's imports "
                "elsewhere"
            )
    return problems


def _check_lab(lab: Any, locked_plugins: tuple[str, ...], root: str) -> list[str]:
    from jupyterlab_server.config import get_static_page_config

    problems: list[str] = []
    page = get_static_page_config(level="all") or {}
    disabled = _as_set(page.get("disabledExtensions"))
    locked = _as_set(page.get("lockedExtensions"))
    for plugin in locked_plugins:
        if plugin not in disabled:
            problems.append(
                f"JupyterLab plugin {plugin!r} is not disabled in labconfig/page_config.json "
                '("disabledExtensions")'
            )
        if plugin not in locked and not getattr(lab, "lock_all_plugins", False):
            problems.append(
                f"JupyterLab plugin {plugin!r} is not locked in labconfig/page_config.json "
                '("lockedExtensions"): the user could enable it again'
            )
    manager = getattr(lab, "extension_manager", "readonly")
    if manager != "readonly":
        problems.append(
            f'LabApp.extension_manager is {manager!r}; it must be "readonly" '
            "(no extension installs from the browser)"
        )
    for trait in ("user_settings_dir", "workspaces_dir", "app_settings_dir"):
        path = getattr(lab, trait, None)
        if path and _inside(path, root):
            problems.append(
                f"LabApp.{trait} is {path!r}, inside the workspace; set "
                "JUPYTERLAB_SETTINGS_DIR/JUPYTERLAB_WORKSPACES_DIR outside it"
            )
    return problems


def _as_set(value: object) -> set[str]:
    if isinstance(value, dict):
        return {k for k, v in value.items() if v}
    if isinstance(value, (list, tuple, set)):
        return {str(v) for v in value}
    return set()


def check_csp(headers: dict[str, Any]) -> list[str]:
    """Problems with the ``Content-Security-Policy`` the server sends with every page.

    Parameters
    ----------
    headers
        The web application's ``headers`` setting (``ServerApp.tornado_settings.headers``).
    """
    name = "ServerApp.tornado_settings.headers.Content-Security-Policy"
    policy = headers.get("Content-Security-Policy")
    if not policy:
        return [
            f"{name} is not set; it must keep the page's requests on the server's origin "
            "(an output or a Markdown image could otherwise send data to any host)"
        ]
    problems = []
    directives: dict[str, list[str]] = {}
    for part in str(policy).split(";"):
        words = part.split()
        if words:
            directives.setdefault(words[0].lower(), words[1:])
    for directive in _REQUIRED_DIRECTIVES:
        if directive not in directives:
            problems.append(f"{name} has no {directive}")
    for directive, sources in directives.items():
        if directive in ("report-uri", "report-to", "sandbox", "upgrade-insecure-requests"):
            continue
        outside = [s for s in sources if s.lower() not in _LOCAL_SOURCES]
        if outside:
            problems.append(
                f"{name}: {directive} allows {' '.join(outside)}; only "
                f"{' '.join(sorted(_LOCAL_SOURCES))} may be given (the server's own origin)"
            )
    return problems


def check_routes(web_app: Any, base_url: str = "/") -> list[str]:
    """Refused paths that the router would send somewhere other than a refusing handler.

    Parameters
    ----------
    web_app
        The server's :class:`tornado.web.Application`.
    base_url
        ``ServerApp.base_url``.
    """
    problems: list[str] = []
    prefix = base_url.rstrip("/")
    for sample in REFUSED_SAMPLES:
        for method in ("GET", "POST"):
            request = HTTPServerRequest(
                start_line=RequestStartLine(method, prefix + sample, "HTTP/1.1"),
                headers=HTTPHeaders({"Host": "localhost"}),
            )
            delegate = web_app.find_handler(request)
            handler = getattr(delegate, "handler_class", None)
            if not is_refusing_handler(handler):
                problems.append(
                    f"{method} {prefix + sample} is routed to {_qualname(handler)}, not a "
                    "refusing handler"
                )
    return problems
