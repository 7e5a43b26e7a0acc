"""Dependencies of the routes: the context, who is asking (bearer token or session cookie),
role checks and the CSRF check of cookie-authenticated writes."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from node.http.bounds import INT32_MAX
from node.http.context import WebContext
from node.http.sessions import Session
from storage.tokens import Role, TokenInfo
from storage.tokens import parse as parse_token

SESSION_COOKIE = "ichtriage_session"
CSRF_HEADER = "X-CSRF-Token"

# The two ways in, declared to OpenAPI (components.securitySchemes and each route's
# `security`); auto_error off: find_principal decides, and answers 401 itself.
BEARER = HTTPBearer(scheme_name="bearer", bearerFormat="icht_...", auto_error=False,
                    description="an API token from `ichtriage admin tokens create`")
SESSION = APIKeyCookie(name=SESSION_COOKIE, scheme_name="session", auto_error=False,
                       description="the page's session (POST /login with a token); a write "
                                   "also needs the X-CSRF-Token header and a same-origin "
                                   "Origin")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
SessionId = Annotated[str | None, Depends(SESSION)]


def get_context(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


Context = Annotated[WebContext, Depends(get_context)]


@dataclass(frozen=True)
class Principal:
    token: TokenInfo
    session: Session | None  # None: a bearer token

    @property
    def actor(self) -> str:
        return self.token.name

    def allows(self, role: Role) -> bool:
        return self.token.role.allows(role)


class NotLoggedIn(Exception):
    """A page was asked for without a session: the handler sends the browser to /login."""


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def verify_token(ctx: WebContext, token: str) -> TokenInfo | None:
    """ctx.tokens.verify, after the token's id is checked to fit the id column (a 10-digit
    id past 2^31-1 would be an "integer out of range" on PostgreSQL): such a token is no
    valid token."""
    parsed = parse_token(token)
    if parsed is None or parsed[0] > INT32_MAX:
        return None
    return ctx.tokens.verify(token)


def find_principal(request: Request, ctx: WebContext) -> Principal | None:
    token = _bearer(request)
    if token is not None:
        pk = ctx.bearers.get(token)
        if pk is not None:
            info = ctx.tokens.get(pk)
            return Principal(info, None) if info is not None and info.active else None
        info = verify_token(ctx, token)
        if info is None:
            return None
        ctx.bearers.put(token, info.pk)
        return Principal(info, None)
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        session = ctx.sessions.get(sid)
        if session is not None:
            info = ctx.tokens.get(session.token_pk)
            if info is not None and info.active:
                return Principal(info, session)
    return None


def current_principal(request: Request, ctx: Context, _bearer: Credentials,
                      _session: SessionId) -> Principal:
    principal = find_principal(request, ctx)
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid API token is needed",
                            headers={"WWW-Authenticate": "Bearer"})
    return principal


def page_principal(request: Request, ctx: Context) -> Principal:
    principal = find_principal(request, ctx)
    if principal is None:
        raise NotLoggedIn()
    return principal


ApiPrincipal = Annotated[Principal, Depends(current_principal)]
PagePrincipal = Annotated[Principal, Depends(page_principal)]


def _allowed(principal: Principal, role: Role) -> Principal:
    if not principal.allows(role):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"the {role} role is needed")
    return principal


def require(role: Role) -> Callable[..., Principal]:
    """A dependency: the API's caller, when its role includes `role` (else 403)."""
    def check(principal: ApiPrincipal) -> Principal:
        return _allowed(principal, role)
    return check


def require_page(role: Role) -> Callable[..., Principal]:
    """As `require`, for pages: no session sends the browser to /login."""
    def check(principal: PagePrincipal) -> Principal:
        return _allowed(principal, role)
    return check


Reader = Annotated[Principal, Depends(require(Role.READER))]
Radiologist = Annotated[Principal, Depends(require(Role.RADIOLOGIST))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
PageReader = Annotated[Principal, Depends(require_page(Role.READER))]
PageAdmin = Annotated[Principal, Depends(require_page(Role.ADMIN))]
PageRadiologist = Annotated[Principal, Depends(require_page(Role.RADIOLOGIST))]


def same_origin(request: Request) -> bool:
    """Whether the request's Origin (or, without one, its Referer) is this server's own."""
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == own
    referer = request.headers.get("referer")
    return referer is not None and (referer == own or referer.startswith(own + "/"))


def check_csrf(request: Request, principal: Principal, form_token: str | None) -> None:
    """Cookie-authenticated writes must come from our own pages: the Origin check and the
    session's CSRF token (form field or X-CSRF-Token). Bearer requests are not sent by a
    browser on its own, so they need neither."""
    if principal.session is None:
        return
    given = form_token or request.headers.get(CSRF_HEADER)
    if not same_origin(request) or given is None or not _equal(given, principal.session.csrf):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def client_of(request: Request) -> str:
    return request.client.host if request.client else ""
