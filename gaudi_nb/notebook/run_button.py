"""RunButton: the panel's Stop / Resume button, whose Stop reaches the server while the kernel is busy.

An ipywidgets Button's click is a message to the kernel, which reads it only between cells: during
`run.wait()` a click did nothing. This button's front end asks the JupyterLab server extension's stop
route itself (POST <base>/gaudi-nb/runs/<id>/stop, with the page's XSRF token, as JupyterLab's own
requests go), and falls back to the kernel message where there is no such server (VS Code, classic).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import anywidget
import traitlets

from .device_grid import widgets_dir


class RunButton(anywidget.AnyWidget):
    """One button; `on_click(callback)` as an ipywidgets Button, `click()` in Python (tests, scripts)."""

    _esm = widgets_dir() / "run_button.js"
    _css = widgets_dir() / "run_button.css"

    run_id = traitlets.Unicode("").tag(sync=True)
    mode = traitlets.Unicode("stop").tag(sync=True)  # stop | stopping | resume | resuming | ended: what a click does
    description = traitlets.Unicode("Stop").tag(sync=True)
    icon = traitlets.Unicode("stop").tag(sync=True)
    button_style = traitlets.Unicode("danger").tag(sync=True)
    disabled = traitlets.Bool(False).tag(sync=True)
    tooltip = traitlets.Unicode("").tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clicks: List[Callable[["RunButton"], None]] = []
        self.stopped_by_server: List[Dict[str, Any]] = []  # what the server's stop route answered, as the front end reported it
        self.on_msg(self._message)

    def on_click(self, callback: Callable[["RunButton"], None], remove: bool = False) -> None:
        if remove:
            self._clicks.remove(callback)
        else:
            self._clicks.append(callback)

    def click(self) -> None:
        for callback in list(self._clicks):
            callback(self)

    def _message(self, _widget: Any, content: Dict[str, Any], _buffers: Any) -> None:
        if content.get("event") == "click":
            self.click()
        elif content.get("event") == "stopped_by_server":
            # arrives once the kernel is free again: the run was asked to stop already, and the panel shows it from its events
            self.stopped_by_server.append(dict(content.get("answer") or {}))


__all__ = ["RunButton"]
