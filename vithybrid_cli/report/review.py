"""`vithybrid review`: the gallery's tiles in edit mode, served on this machine, each label
decision appended to a corrections file (io/corrections.py) before the browser hears back.

SOURCE is a classify output (io/results.py) or an issues file (`fit --issues`: JSONL records
with path, label, suggested, score, kind). The page is the report's page (page.py, templates/)
with `Page.edit` set: page.js then shows the label keys and sends each decision to this API:

    POST /api/labels  {"path": ..., "label": ...}  -> 200 {"path", "label", "was", "time"}
    GET  /api/labels                                -> {"labels": [...]} (the label set)
    GET  /api/items                                 -> [{"path", "label", "was", "reviewed"}]

Safety: every request carries the session's token (the API: `Authorization: Bearer TOKEN`;
the page and its thumbnails: `?token=TOKEN`): none is 401, a wrong one 403. A request whose
Host is not the server's own (DNS rebinding) or whose Origin is another site's is 403. Only
SOURCE's paths can be labeled, with a label of the label set (else 404 / 400, nothing
written); thumbnails are served by index from the folder made at start, never by a path the
client names: no request reads or writes any other file.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..extras import require
from ..io.corrections import Correction, append_correction, now, read_correction_lines
from ..io.issues import IssuesError, is_issues_file, read_issues
from ..io.results import NotResults, read_results
from .page import Page, Tile, View, render_page
from .thumbnails import Thumbnail, make_thumbnails

NUMBER_KEYS = 9  # labels 1..9 have a number key


@dataclass
class Item:
    """One photo to review, as SOURCE shows it."""

    path: str
    label: str | None  # SOURCE's label (None: abstained)
    score: float | None = None
    top_k: list[tuple[str, float | None]] = field(default_factory=list)
    suggested: str | None = None  # an issues file's suggested label
    kind: str = ""  # an issues file's kind of issue


@dataclass
class Session:
    """What the server serves: SOURCE's photos, their thumbnails, the label set, and the
    corrections file with its current state (the last line of each path wins)."""

    source: str
    corrections: str
    items: list[Item]
    labels: list[str]
    thumbs: dict[str, Thumbnail]
    folder: Path
    not_found: int = 0  # local images found nowhere (relative paths from another folder)
    current: dict[str, str | None] = field(default_factory=dict)  # path -> last correction
    decisions: int = 0  # lines in the corrections file
    index: dict[str, int] = field(default_factory=dict)  # path -> its (first) item

    def __post_init__(self) -> None:
        for number, item in enumerate(self.items):
            self.index.setdefault(item.path, number)

    def shown(self, item: Item) -> str | None:
        """The label the page shows: the last correction, else SOURCE's."""
        return self.current.get(item.path, item.label)

    def decide(self, path: str, label: str) -> Correction:
        """Append the decision (on disk when this returns) and note it."""
        item = self.items[self.index[path]]
        correction = Correction(path, label, self.shown(item), now())
        append_correction(self.corrections, correction)
        self.current[path] = label
        self.decisions += 1
        return correction


# ---------------------------------------------------------------------------- reading SOURCE


def read_source(source: str) -> list[Item]:
    """SOURCE's photos (failed records left out: there is nothing to see); NotResults (one
    line) for a file that is neither a classify output nor an issues file."""
    issues = _read_issues(source)
    if issues is not None:
        return issues
    results = read_results(source)
    return [Item(row.path, row.label, row.score, row.top_k) for row in results.rows if row.ok]


def _read_issues(source: str) -> list[Item] | None:
    """The records of an issues file (io/issues.py), or None when `source` is not one."""
    if not is_issues_file(source):
        return None
    try:
        records = read_issues(source)
    except IssuesError as error:
        raise NotResults(str(error)) from None
    return [
        Item(str(record["path"]), _text(record["label"]),
             float(record["score"]) if isinstance(record["score"], int | float) else None,
             suggested=_text(record["suggested"]), kind=str(record["kind"] or ""))
        for record in records
    ] or None  # fmt: skip


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def label_set(items: list[Item], extra: Iterable[str] = ()) -> list[str]:
    """The labels a photo can get: SOURCE's (labels, top-k labels, suggestions; the most used
    first, so they get the number keys) and `extra` (--labels), in that order."""
    counts: Counter[str] = Counter()
    for item in items:
        for label in (item.label, item.suggested):
            if label is not None:
                counts[label] += 1
        for label, _ in item.top_k:
            counts[label] += 0
    labels = [label for label, _ in sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))]
    return labels + [label for label in dict.fromkeys(extra) if label not in counts]


def open_session(
    source: str,
    corrections: str,
    *,
    extra_labels: Iterable[str] = (),
    folder: Path,
    bases: Iterable[Path] = (),
    progress: Callable[[int, int], None] | None = None,
) -> Session:
    """Read SOURCE and the corrections so far, make the thumbnails in `folder`."""
    items = read_source(source)
    if not items:
        raise NotResults(f"{source}: no photo to review (every record failed, or none)")
    labels = label_set(items, extra_labels)
    lines = read_correction_lines(corrections) if os.path.exists(corrections) else []
    thumbs, stats = make_thumbnails((item.path for item in items), folder, bases=bases,
                                    progress=progress)  # fmt: skip
    session = Session(source, corrections, items, labels, thumbs, folder, stats.not_found)
    session.decisions = len(lines)
    for line in lines:
        if line.path in session.index:
            session.current[line.path] = line.label
    return session


# ---------------------------------------------------------------------------- the page


def review_page(session: Session, token: str) -> Page:
    """The report's page in edit mode: a tile per photo in SOURCE's order."""
    tiles = []
    for number, item in enumerate(session.items):
        thumb = session.thumbs.get(item.path) or Thumbnail(reason="no thumbnail")
        label = session.shown(item)
        detail = f"{item.score:.3f}" if item.score is not None else ""
        if item.suggested is not None:
            detail = f"suggested {item.suggested}" + (f" · {detail}" if detail else "")
        tiles.append(Tile(
            item.path, title=label, detail=detail, top_k=item.top_k,
            thumb=f"thumbs/{number}?token={token}" if thumb.file else None,
            reason=None if thumb.file else thumb.reason,
        ))  # fmt: skip
    reviewed = [n for n, item in enumerate(session.items) if item.path in session.current]
    done = set(reviewed)
    start = next((n for n in range(len(tiles)) if n not in done), 0)
    order = list(range(len(tiles)))
    note = "Number keys or typing pick a label, Enter accepts; arrows move."
    edit = {
        "labels": session.labels,
        "keys": min(NUMBER_KEYS, len(session.labels)),
        "token": token,
        "api": "api/labels",
        "reviewed": reviewed,
        "original": [item.label for item in session.items],
        "start": start,
        "output": session.corrections,
    }
    facts = [("photos", f"{len(tiles):,}"), ("labels", f"{len(session.labels):,}")]
    views = [View("All", order, note, grouped=False)]
    subtitle = f"decisions go to {session.corrections}"
    return Page(f"Review {session.source}", subtitle, facts, views=views, tiles=tiles, edit=edit)


# ---------------------------------------------------------------------------- the server


def create_app(session: Session, token: str, hosts: Iterable[str] | None) -> Any:
    """The Starlette app serving `session`; `hosts`: the Host headers it answers (its own
    address: 127.0.0.1:PORT, localhost:PORT; None: any, for a server on every address)."""
    applications = require("starlette.applications", "review", "starlette")
    responses = require("starlette.responses", "review", "starlette")
    routing = require("starlette.routing", "review", "starlette")
    JSONResponse, Response = responses.JSONResponse, responses.Response
    allowed = None if hosts is None else set(hosts)

    def refused(request: Any, *, bearer: bool) -> Any:
        """A response refusing `request`, or None when it may go on."""
        host = request.headers.get("host", "")
        if allowed is not None and host not in allowed:
            return JSONResponse({"error": f"host {host!r} not allowed"}, 403)
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{host}":
            return JSONResponse({"error": f"origin {origin!r} not allowed"}, 403)
        given = request.query_params.get("token")
        if bearer:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            given = given.strip() if scheme.lower() == "bearer" else None
        if not given:
            return JSONResponse({"error": "the session token is missing"}, 401)
        if not secrets.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "wrong token"}, 403)
        return None

    async def page(request: Any) -> Any:
        answer = refused(request, bearer=False)
        if answer is not None:
            return answer
        text = render_page(review_page(session, token))
        headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        return responses.HTMLResponse(text, headers=headers)

    async def thumbnail(request: Any) -> Any:
        answer = refused(request, bearer=False)
        if answer is not None:
            return answer
        number = request.path_params["number"]
        if number >= len(session.items):
            return Response("no such photo", 404)
        thumb = session.thumbs.get(session.items[number].path)
        if thumb is None or thumb.file is None:
            return Response("no thumbnail", 404)
        return responses.FileResponse(session.folder / thumb.file)

    async def labels(request: Any) -> Any:
        answer = refused(request, bearer=True)
        if answer is not None:
            return answer
        if request.method == "GET":
            return JSONResponse({"labels": session.labels})
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is JSON: {\"path\": ..., \"label\": ...}"},
                                400)  # fmt: skip
        path = body.get("path") if isinstance(body, dict) else None
        label = body.get("label") if isinstance(body, dict) else None
        if not isinstance(path, str) or not isinstance(label, str):
            return JSONResponse({"error": "path and label are strings"}, 400)
        if path not in session.index:
            return JSONResponse({"error": f"{path!r} is not a photo of {session.source}"}, 404)
        if label not in session.labels:
            return JSONResponse({"error": f"{label!r} is not in the label set"}, 400)
        return JSONResponse(session.decide(path, label).record())

    async def items(request: Any) -> Any:
        answer = refused(request, bearer=True)
        if answer is not None:
            return answer
        return JSONResponse([
            {"path": item.path, "label": session.shown(item), "was": item.label,
             "reviewed": item.path in session.current}
            for item in session.items
        ])  # fmt: skip

    routes = [
        routing.Route("/", page),
        routing.Route("/thumbs/{number:int}", thumbnail),
        routing.Route("/api/labels", labels, methods=["GET", "POST"]),
        routing.Route("/api/items", items),
    ]
    return applications.Starlette(routes=routes)


def new_token() -> str:
    return secrets.token_urlsafe(24)


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on (host, port) (port 0: a free one); OSError when it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


WILDCARDS = ("0.0.0.0", "::", "")


def own_hosts(host: str, port: int) -> list[str] | None:
    """The Host headers a browser sends to this server (None: any name may reach a server on
    every address; the token still guards it)."""
    if host in WILDCARDS:
        return None
    name = f"[{host}]" if ":" in host else host
    hosts = [f"{name}:{port}"]
    if host in ("127.0.0.1", "::1", "localhost"):
        hosts += [f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"]
    return hosts


def url_of(host: str, port: int, token: str) -> str:
    """The page's URL, with the token (a server on every address: by 127.0.0.1)."""
    name = "127.0.0.1" if host in WILDCARDS else f"[{host}]" if ":" in host else host
    return f"http://{name}:{port}/?token={token}"


def serve(app: Any, sock: socket.socket) -> None:
    """Serve `app` on `sock` until Ctrl-C (which uvicorn turns into a clean shutdown)."""
    uvicorn = require("uvicorn", "review")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the signal again once it has shut down
        pass
    finally:
        sock.close()
