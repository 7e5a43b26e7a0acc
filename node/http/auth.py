"""The page's log-in: a token typed once opens a session held in an HttpOnly, SameSite=Strict
cookie (the token itself is never stored in the browser)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from node.http.deps import SESSION_COOKIE, Context, client_of, same_origin, verify_token
from node.http.pages import render
from node.http.sessions import SESSION_SECONDS

router = APIRouter(tags=["pages"], include_in_schema=False)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> Response:
    return render(request, "login.html", {"error": ""})


@router.post("/login")
def login(request: Request, ctx: Context,
          token: Annotated[str, Form(max_length=200)]) -> Response:
    if not same_origin(request):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")
    info = verify_token(ctx, token)
    if info is None:
        ctx.audit.record("login_failed", actor="?", client=client_of(request))
        return render(request, "login.html", {"error": "That token is not valid."},
                      status_code=status.HTTP_401_UNAUTHORIZED)
    sid, _ = ctx.sessions.open(info.pk, str(info.role))
    ctx.tokens.touch(info.pk)
    ctx.audit.record("login", actor=info.name, token_pk=info.pk, client=client_of(request))
    response = RedirectResponse("/", status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(SESSION_COOKIE, sid, max_age=int(SESSION_SECONDS), httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
def logout(request: Request, ctx: Context) -> Response:
    if not same_origin(request):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        ctx.sessions.close(sid)
    response = RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
