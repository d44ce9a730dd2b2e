"""The sandboxed kernel: a jupyter_client KernelProvisioner that starts ipykernel under
bubblewrap with no network, ipc transport, a cleared environment, and only the workspace and
the gateway socket bound.

:class:`SandboxProvisioner` is the ``incisive-sandbox`` provisioner (entry point of
``jupyter_client.kernel_provisioners``); :mod:`incisive_kernels.sandbox` builds the sandbox's
command line as data. See ``docs/kernels.md``.
"""

from incisive_kernels.provisioner import SandboxProvisioner
from incisive_kernels.sandbox import SandboxError

__all__ = ["SandboxError", "SandboxProvisioner"]
