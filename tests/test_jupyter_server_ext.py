"""The JupyterLab extension's server part (gaudi_nb/jupyter_server_ext/) without a browser: every route is behind
Jupyter's authentication, and the money the status bar shows. The lab part, in Chromium, is test_labextension.py."""
from __future__ import annotations

import os
import subprocess
import sys

AUTH_CHECK = """
import warnings
from jupyter_server.serverapp import ServerApp
from jupyter_server.utils import JupyterServerAuthWarning

# only gaudi_nb's extension, on a server that allows nothing unauthenticated: Jupyter warns about
# every route whose verbs lack an authentication decorator
app = ServerApp(allow_unauthenticated_access=False, jpserver_extensions={"gaudi_nb.jupyter_server_ext": True}, reraise_server_extension_failures=True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    app.initialize(argv=[], find_extensions=False, new_httpserver=False)
print("ROUTES", sum(1 for rule in app.web_app.default_router.rules for r in rule.target.rules if "/gaudi-nb/" in str(r.matcher.regex.pattern)))
for w in caught:
    if issubclass(w.category, JupyterServerAuthWarning):
        print("UNGUARDED", w.message)
"""


def test_jupyter_finds_no_route_without_authentication(tmp_path):
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "GAUDI_NB_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", AUTH_CHECK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ROUTES 7" in done.stdout and "UNGUARDED" not in done.stdout, done.stdout
