"""The viewer's HTTP side: a small server on 127.0.0.1 rendering :mod:`.pages` through jinja2 templates.

It serves the standard library's ``ThreadingHTTPServer`` (as the simulator does), answers
only to a loopback ``Host`` (so a web page elsewhere cannot reach it by DNS rebinding), and
sends a Content-Security-Policy that allows nothing but its own stylesheet and icon: the
pages use no JavaScript and load nothing from anywhere else. Each request opens the store
read-only for itself, so a run may keep writing to the store while it is viewed.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import threading
import time
import traceback
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jinja2

from coordlab.runners.export import episode_key, find_episode
from coordlab.runners.loopback_service import LoopbackService
from coordlab.runners.store import SCHEMA_VERSION, Store, StoreError, open_readonly

from . import pages
from .links import HOST, VIEWER_PORT, episode_url

_HERE = Path(__file__).parent
_EPISODE = re.compile(r"^/episodes/(\d+)$")
_STATIC = {"/static/viewer.css": ("viewer.css", "text/css; charset=utf-8"),
           "/favicon.ico": ("favicon.svg", "image/svg+xml"), "/favicon.svg": ("favicon.svg", "image/svg+xml")}
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ViewerError(RuntimeError):
    """The viewer cannot start (a port in use, a host that is not loopback); the message says what to do."""


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"),
                                     autoescape=jinja2.select_autoescape(["html"], default=True),
                                     undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["when"] = lambda seconds: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
    environment.filters["quote"] = lambda text: urllib.parse.quote(str(text), safe="")
    environment.globals["block"] = pages.block
    return environment


class _FilterOptions:
    """The filter menus' values, read again only when the store file has changed (they take a scan)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._options: dict[str, list[str]] = {}

    def get(self, store: Store) -> dict[str, list[str]]:
        stamp = tuple(_stat(Path(f"{store.path}{suffix}")) for suffix in ("", "-wal"))
        with self._lock:
            if stamp != self._stamp:
                self._options, self._stamp = pages.filter_options(store), stamp
            return self._options


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: the terminal shows the URL once, not a line per page."""

    # -- plumbing ------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**_SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _page(self, template: str, http_status: int = 200, **context: Any) -> None:
        context.setdefault("store_path", str(self.server.store_path))
        html = self.server.templates.get_template(template).render(**context)
        self._send(http_status, html.encode("utf-8"), "text/html; charset=utf-8")

    def _problem(self, status: int, sentence: str) -> None:
        self._page("problem.html", status, status=status, title=HTTPStatus(status).phrase, sentence=sentence)

    def _host_is_loopback(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    # -- routes ------------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if not self._host_is_loopback():
            self._send(403, b"this viewer answers to 127.0.0.1 only\n", "text/plain; charset=utf-8")
            return
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        path = parsed.path.rstrip("/") or "/"
        if path in _STATIC:
            name, content_type = _STATIC[path]
            self._send(200, (_HERE / "static" / name).read_bytes(), content_type,
                       {"Cache-Control": "max-age=3600"})
            return
        try:
            with open_readonly(self.server.store_path) as store:
                self._route(store, path, query)
        except pages.BadRequest as exc:
            self._problem(400, str(exc))
        except StoreError as exc:
            self._problem(500, str(exc))
        except Exception as exc:  # noqa: BLE001 - a page that fails says so instead of dropping the connection
            traceback.print_exc()
            self._problem(500, f"The viewer failed to build this page ({type(exc).__name__}: {exc}); this is a bug "
                               f"in coordlab: please report it with the URL. `coordlab show` prints the episode "
                               f"meanwhile.")

    def _route(self, store: Store, path: str, query: dict[str, list[str]]) -> None:
        if path in ("/", "/runs"):
            self._page("runs.html", runs=pages.runs(store))
        elif path == "/episodes":
            self._episodes(store, query)
        elif path == "/episodes/by-key":
            self._by_key(store, query)
        elif (match := _EPISODE.match(path)):
            self._episode(store, int(match.group(1)))
        else:
            self._problem(404, f"There is no page {path} here. The viewer has the runs (/), the episodes "
                               f"(/episodes) and one page per episode (/episodes/ID or /episodes/by-key?key=KEY).")

    def _episodes(self, store: Store, query: dict[str, list[str]]) -> None:
        chosen = pages.EpisodeFilter.from_query(query)
        page = pages.episodes(store, chosen, pages.parse_page(query))

        def link(number: int) -> str:
            return "/episodes?" + urllib.parse.urlencode([*chosen.values, ("page", str(number))])

        self._page("episodes.html", page=page, chosen=chosen, options=self.server.filter_options.get(store),
                   filters=pages.FILTERS, link=link)

    def _by_key(self, store: Store, query: dict[str, list[str]]) -> None:
        key = (query.get("key") or [""])[-1].strip()
        if not key:
            raise pages.BadRequest("by-key needs ?key=TASK/FRAMEWORK[@VERSION]/VARIANT/PROFILE/SEED[/tTRIAL]")
        run = (query.get("run") or [""])[-1].strip()
        try:
            row = find_episode(store, key)
            if run and row["run_id"] != run:
                found = episode_key(row)
                sql = ("SELECT * FROM episodes WHERE run_id = ? AND task = ? AND framework = ? AND "
                       "framework_version = ? AND variant = ? AND profile = ? AND seed = ?")
                params: list[Any] = [run, found.task, found.framework, found.framework_version, found.variant,
                                     found.profile, found.seed]
                if "trial" in row.keys():  # a store before schema 4 has trial 0 only
                    sql += " AND trial = ?"
                    params.append(found.trial)
                rows = store.query(sql, params)
                if not rows:
                    raise StoreError(f"no episode {key} in run {run} of {store.path}")
                row = rows[0]
        except StoreError as exc:
            if "expected TASK/" in str(exc):
                self._problem(400, f"{exc}; the episode list (/episodes) shows every key of this store.")
            else:
                self._problem(404, f"{exc}: the episode list (/episodes) shows every key of this store.")
            return
        self._send(302, b"", "text/plain; charset=utf-8", {"Location": f"/episodes/{row['episode_id']}"})

    def _episode(self, store: Store, episode_id: int) -> None:
        row = pages.find(store, episode_id)
        if row is None:
            self._problem(404, f"There is no episode {episode_id} in {store.path}. Episode ids are the store's own and "
                               f"change when a store is rebuilt; a link by key (/episodes/by-key?key=...) survives.")
            return
        self._page("episode.html", view=pages.episode_view(store, row), schema=SCHEMA_VERSION)

    def _refuse(self) -> None:
        self._send(405, b"the viewer only reads: use GET\n", "text/plain; charset=utf-8", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815 - stdlib naming


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], store_path: Path):
        self.store_path = store_path
        self.templates = _environment()
        self.filter_options = _FilterOptions()
        super().__init__(address, _Handler)


class Viewer(LoopbackService):
    """The episode viewer of one store, served on 127.0.0.1; use as a context manager, or call :meth:`start`.

    The store is opened and checked (it exists, is a coordlab store, is not damaged) before
    anything is bound, so a bad ``--store`` fails with its :class:`StoreError` and no server.
    ``port=0`` picks a free port (tests); :attr:`url` then tells which.
    """

    thread_name = "coordlab-viewer"

    def __init__(self, store_path: str | Path, port: int = VIEWER_PORT, host: str = HOST):
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ViewerError(f"the viewer serves on 127.0.0.1 only, not {host!r}: it shows everything in the store")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ViewerError(f"--port must be a whole number from 0 to 65535 (0: any free port), got {port!r}")
        self.store_path = Path(store_path)
        with open_readonly(self.store_path) as store:
            store.check_integrity()
        super().__init__(host, port)

    def _bind(self) -> "_Server":
        try:
            return _Server((self.host, self.port), self.store_path)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ViewerError(f"port {self.port} on {self.host} is already in use (another `coordlab view`?): "
                                  f"choose another with --port N, or --port 0 for any free one") from None
            raise ViewerError(f"cannot serve on {self.host}:{self.port}: {exc.strerror or exc}") from None

    def episode_url(self, episode_id: int) -> str:
        """This viewer's page for one episode."""
        return episode_url(episode_id, self.port)


def serve(store_path: str | Path, port: int = VIEWER_PORT, open_browser: bool = False,
          until: threading.Event | None = None, announce: Any = print) -> None:
    """Serve the viewer until Ctrl-C (or ``until`` is set): what ``coordlab view`` does.

    ``announce`` hears the URL line once the server listens; ``open_browser`` opens it in the
    desktop's browser.
    """
    with Viewer(store_path, port) as viewer:
        announce(f"coordlab viewer: {viewer.url}  (store {viewer.store_path}; Ctrl-C stops it)")
        if open_browser:
            import webbrowser

            webbrowser.open(viewer.url)
        try:
            (until or threading.Event()).wait()
        except KeyboardInterrupt:
            pass
