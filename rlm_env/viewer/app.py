"""`rlm-env view DIR`: a local web page over a run folder (FastAPI + Jinja2, no JavaScript).

Two pages: `/` is the episode table (sortable by any column through links, filtered by a plain
GET form), `/episode?file=...&id=...` is one episode as a tree of collapsible `<details>`
sections: each turn's reply and code, the REPL output, the sub-calls with prompt and reply,
child `rlm_query` episodes nested the same way, then the answer, each reward component and
the token and time figures. The stylesheet ships in the package (`static/`), so the page needs
no network. The server listens on 127.0.0.1 only: records hold prompts and answers, and
nothing here is meant to be exposed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from rlm_env.viewer.runs import SORT_KEYS, RunFolder, episode_tree, filter_and_sort

HERE = Path(__file__).parent
CLIP_CHARS = 4000
"""Longest text shown in full; the rest is counted, not sent (a sub-call prompt may hold a big
slice of the context)."""


def clip(text: Any, limit: int = CLIP_CHARS) -> str:
    text = text if isinstance(text, str) else json.dumps(text, default=str)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… ({len(text) - limit:,} more characters not shown)"


def create_app(folder: str | Path) -> FastAPI:
    run = RunFolder(folder)
    app = FastAPI(title=f"rlm-env view: {run.folder}", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["clip"] = clip
    templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=1, default=str)

    @app.get("/", response_class=HTMLResponse)
    def table(request: Request) -> Any:
        params = dict(request.query_params)
        all_rows = run.rows()
        rows = filter_and_sort(list(all_rows), params)

        def sort_link(key: str) -> str:
            order = "asc" if params.get("sort") == key and params.get("order") == "desc" else "desc"
            return "?" + urlencode({**params, "sort": key, "order": order})

        choices = {
            k: sorted({getattr(r, k) for r in all_rows})
            for k in ("family", "length", "status", "stop_reason")
        }
        return templates.TemplateResponse(
            request,
            "index.html",
            {
                "folder": str(run.folder),
                "rows": rows,
                "total": len(all_rows),
                "params": params,
                "choices": choices,
                "sort_keys": SORT_KEYS,
                "sort_link": sort_link,
                "several_files": len({r.file for r in all_rows}) > 1,
            },
        )

    @app.get("/episode", response_class=HTMLResponse)
    def episode(request: Request, file: str, id: str) -> Any:
        record = run.episode(file, id)
        if record is None:
            raise HTTPException(404, f"no episode {id!r} in {file!r}")
        return templates.TemplateResponse(
            request, "episode.html", {"folder": str(run.folder), "file": file, "tree": episode_tree(record)}
        )

    return app


def main(args: Any) -> int:
    import uvicorn

    folder = Path(args.dir)
    if not folder.exists():
        raise SystemExit(f"no such run folder: {folder}")
    print(f"serving {folder.resolve()} at http://127.0.0.1:{args.port}/ (Ctrl-C to stop)")
    uvicorn.run(create_app(folder), host="127.0.0.1", port=args.port, log_level="warning")
    return 0
