"""Run inside an outer bubblewrap sandbox by test_nested.py, as the hub's single-user server
would be: start the sandboxed kernel with jupyter_client, probe it, print one JSON document.

Usage: python _nested_probe.py LOOPBACK_PORT
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path
from typing import Any

from jupyter_client import KernelManager


def main(port: int) -> dict[str, Any]:
    out: dict[str, Any] = {"server": {
        "uid": os.getuid(),
        # the danger an inner bind of /proc would bring: the server's own environ holds the token
        "own_environ_has_token": b"JUPYTERHUB_API_TOKEN" in Path("/proc/self/environ").read_bytes(),
    }}
    km = KernelManager(kernel_name="incisive")  # workspace: the server's cwd (/workspace)
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)

        def run(code: str) -> Any:
            """Run a cell that sets ``result``; read it from the execute reply."""
            reply = kc.execute_interactive(
                code, timeout=60, user_expressions={"r": "__import__('json').dumps(result)"})
            expression = reply["content"]["user_expressions"]["r"]
            if expression["status"] != "ok":
                return {"error": expression.get("ename")}
            return json.loads(ast.literal_eval(expression["data"]["text/plain"]))

        out["kernel"] = run(f"""
import os, json, socket, httpx
got = {{"uid": os.getuid(), "cwd": os.getcwd(), "proc": sorted(os.listdir("/proc")),
        "env_has_token": any("JUPYTERHUB" in k for k in os.environ),
        "run_incisive": sorted(os.listdir("/run/incisive")), "cpu_count": os.cpu_count()}}
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5).close(); got["loopback"] = "connected"
except OSError as e:
    got["loopback"] = e.errno
with httpx.Client(transport=httpx.HTTPTransport(uds=os.environ["INCISIVE_GATEWAY"])) as c:
    got["gateway"] = c.get("http://gateway/gateway/info").json()
import numpy, zmq
got["imports"] = "ok"
result = got
""")
        msg_id = kc.execute("import time; print('sleeping', flush=True); time.sleep(60)",
                   stop_on_error=False)  # the next cell must not be aborted
        while True:  # wait until the cell is inside its sleep
            msg = kc.get_iopub_msg(timeout=30)
            if msg["msg_type"] == "stream" and "sleeping" in msg["content"]["text"]:
                break
        km.interrupt_kernel()
        while True:  # skip late replies to wait_for_ready's kernel_info requests
            reply = kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        out["interrupt"] = reply["content"].get("ename")
        run("x = 1; result = x")
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        out["after_restart"] = run("result = 'kept' if 'x' in globals() else 'fresh'")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return out


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
