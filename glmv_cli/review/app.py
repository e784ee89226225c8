"""The review page's web app: static assets shipped in the package (no CDN) and a small JSON API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from glmv_cli.errors import GlmvError
from glmv_cli.review.session import DecisionError, ReviewSession

STATIC = Path(__file__).parent / "static"


def create_review_app(session: ReviewSession) -> FastAPI:
    app = FastAPI(title="glmv review", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def doc_or_404(pos: int) -> dict[str, Any]:
        try:
            return session.document(pos)
        except KeyError:
            raise HTTPException(404, f"no document {pos}") from None

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/queue")
    def queue() -> dict[str, Any]:
        return {"results": str(session.results), "schema": session.schema_key, "queue": session.queue()}

    @app.get("/api/doc/{pos}")
    def document(pos: int) -> dict[str, Any]:
        return doc_or_404(pos)

    @app.get("/api/doc/{pos}/page/{page}.png")
    async def page(pos: int, page: int) -> Response:
        doc_or_404(pos)
        try:
            png = await run_in_threadpool(session.page_png, pos, page)
        except GlmvError as exc:
            raise HTTPException(404, exc.one_line()) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/doc/{pos}/decide")
    async def decide(pos: int, request: Request) -> JSONResponse:
        doc_or_404(pos)
        body = await request.json()
        action = body.get("action", "edit")
        if action not in ("accept", "edit") or not isinstance(body.get("field"), str):
            return JSONResponse({"error": "give a field and an action (accept or edit)"}, status_code=400)
        try:
            saved = session.decide(pos, body["field"], body.get("value"), action)
        except DecisionError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse(saved)

    @app.post("/api/doc/{pos}/undo")
    async def undo(pos: int, request: Request) -> dict[str, Any]:
        doc_or_404(pos)
        body = await request.json()
        session.undo(pos, str(body.get("field")))
        return {"undone": body.get("field")}

    @app.post("/api/doc/{pos}/accept-confident")
    async def accept_confident(pos: int, request: Request) -> dict[str, Any]:
        doc_or_404(pos)
        body = await request.json()
        threshold = body.get("threshold")
        return {"accepted": session.accept_confident(pos, float(threshold) if threshold is not None else None)}

    return app
