"""The server extension's routes: REST over the run store and a WebSocket that pushes a snapshot every second."""
from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import tornado
from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.utils import url_path_join
from tornado.ioloop import PeriodicCallback
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ..errors import GaudiNbError, NotAllowedError, NotFoundError
from . import payloads

URL_PATH = "gaudi-nb"
# what a custom authorizer (JupyterHub's scopes, say) is asked about: reading runs, or stopping and attaching (write)
AUTH_RESOURCE = "gaudi_nb"
# the client may slow the pushes down or speed them up, within these bounds (milliseconds)
MIN_INTERVAL_MS, MAX_INTERVAL_MS = 250, 60_000
T = TypeVar("T")


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking read (SQL, a sync from a node over SSH) in a thread, so the server keeps serving."""
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args))


class GaudiHandler(APIHandler):
    """JSON out; gaudi_nb's own errors become a 4xx with their message, which says what to do.

    Every verb is @tornado.web.authenticated (no token or login: 403, nothing read) and
    @authorized (GET is "read", POST is "write" on the gaudi_nb resource).
    """

    auth_resource = AUTH_RESOURCE

    def reply(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body, default=str))

    def number(self, name: str, default: int) -> int:
        try:
            return int(self.get_query_argument(name, str(default)))
        except ValueError:
            raise tornado.web.HTTPError(400, f"{name} must be a whole number") from None

    async def answer(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            body = await off_loop(fn, *args)
        except NotFoundError as exc:
            return self.reply({"message": str(exc)}, 404)
        except NotAllowedError as exc:  # someone else's run on a team store
            return self.reply({"message": str(exc)}, 403)
        except GaudiNbError as exc:
            return self.reply({"message": str(exc)}, 400)
        self.reply(body)


class NodesHandler(GaudiHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        await self.answer(lambda: {"nodes": payloads.snapshot()["nodes"]})

    @tornado.web.authenticated
    @authorized
    async def post(self) -> None:
        """Attach a node: {"url": "ssh://user@host[:port]", "name": ..., "trust_new_host": false}."""
        body = self.get_json_body() or {}
        url = str(body.get("url") or "").strip()
        if not url:
            return self.reply({"message": "give the node's address: ssh://user@host[:port]"}, 400)
        await self.answer(payloads.attach, url, (body.get("name") or "").strip() or None, bool(body.get("trust_new_host")))


class RunsHandler(GaudiHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        limit = self.number("limit", payloads.RECENT_RUNS)
        await self.answer(lambda: {"runs": payloads.runs(limit=max(1, min(limit, payloads.RUNS_READ)))})


class RunHandler(GaudiHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self, run_id: str) -> None:
        events = self.number("events", 50)
        await self.answer(payloads.run, run_id, max(0, min(events, 1000)))


class StopHandler(GaudiHandler):
    @tornado.web.authenticated
    @authorized
    async def post(self, run_id: str) -> None:
        user = getattr(self.current_user, "username", None) or getattr(self.current_user, "name", None)  # the Jupyter user: the audit names them
        await self.answer(payloads.stop, run_id, user, f"jupyter from {self.request.remote_ip}")


class CostsHandler(GaudiHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        await self.answer(lambda: payloads.snapshot()["costs"])


class ConfigHandler(GaudiHandler):
    @tornado.web.authenticated
    @authorized
    async def get(self) -> None:
        from ..version import __version__

        self.reply({"version": __version__, "dashboard_url": payloads.dashboard_url(), "interval_ms": 1000})


class UpdatesHandler(WebSocketMixin, WebSocketHandler, JupyterHandler):  # type: ignore[misc]
    """Pushes {"type": "snapshot", nodes, runs, costs} every second.

    The client sends {"paused": true|false} and {"interval_ms": N}. Authentication happens
    before the upgrade (ws_authenticated answers 403 to a request without the token), so a
    refused client never gets a socket, let alone a snapshot.
    """

    auth_resource = AUTH_RESOURCE
    callback: Optional[PeriodicCallback] = None
    interval_ms = 1000
    paused = False
    _sending = False

    def set_default_headers(self) -> None:
        """JupyterHandler's headers (CSP and the like) are for pages, not for a socket's upgrade."""

    @ws_authenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        if not await ensure_async(self.authorizer.is_authorized(self, self.current_user, "read", AUTH_RESOURCE)):
            raise tornado.web.HTTPError(403)
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().open(*args, **kwargs)  # WebSocketMixin: keep-alive pings
        self._restart()
        tornado.ioloop.IOLoop.current().add_callback(self.push)  # the first snapshot at once, not after a second

    def _restart(self) -> None:
        if self.callback is not None:
            self.callback.stop()
        self.callback = PeriodicCallback(self.push, self.interval_ms)
        if not self.paused:
            self.callback.start()

    def on_message(self, message: Any) -> None:
        try:
            request = json.loads(message)
        except (TypeError, ValueError):
            return
        if not isinstance(request, dict):
            return
        if "interval_ms" in request:
            try:
                self.interval_ms = max(MIN_INTERVAL_MS, min(MAX_INTERVAL_MS, int(request["interval_ms"])))
            except (TypeError, ValueError):
                pass
        if "paused" in request:
            self.paused = bool(request["paused"])
        self._restart()
        self._send({"type": "state", "paused": self.paused, "interval_ms": self.interval_ms})

    async def push(self) -> None:
        if self._sending:  # a slow sync (a node over SSH) must not pile up reads behind it
            return
        self._sending = True
        try:
            snapshot = await off_loop(payloads.snapshot)
        except Exception as exc:  # the socket stays; the sidebar shows why there are no numbers
            self.log.warning("gaudi_nb: snapshot failed: %s", exc)
            snapshot = {"type": "error", "message": f"{type(exc).__name__}: {exc}"}
        finally:
            self._sending = False
        self._send(snapshot)

    def _send(self, body: Dict[str, Any]) -> None:
        try:
            self.write_message(json.dumps(body, default=str))
        except WebSocketClosedError:
            self.on_close()

    def on_close(self) -> None:
        if self.callback is not None:
            self.callback.stop()
            self.callback = None


def routes(base_url: str) -> List[Tuple[str, Any]]:
    def at(*parts: str) -> str:
        return url_path_join(base_url, URL_PATH, *parts)

    run_id = r"(?P<run_id>[^/]+)"
    return [
        (at("nodes"), NodesHandler),
        (at("runs"), RunsHandler),
        (at("runs", run_id), RunHandler),
        (at("runs", run_id, "stop"), StopHandler),
        (at("costs"), CostsHandler),
        (at("config"), ConfigHandler),
        (at("updates"), UpdatesHandler),
    ]
