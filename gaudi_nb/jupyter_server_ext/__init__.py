"""gaudi_nb's jupyter_server extension: the REST and WebSocket routes the JupyterLab sidebar and status bar read."""
from __future__ import annotations

from typing import Any, Dict, List


def _jupyter_server_extension_points() -> List[Dict[str, str]]:
    return [{"module": "gaudi_nb.jupyter_server_ext"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    """Add the routes under <base_url>/gaudi-nb/; etc/jupyter/jupyter_server_config.d/gaudi_nb.json enables this on install."""
    from .handlers import URL_PATH, routes

    web_app = server_app.web_app
    web_app.add_handlers(".*$", routes(web_app.settings["base_url"]))
    server_app.log.info(f"gaudi_nb: routes under {web_app.settings['base_url']}{URL_PATH}/")
