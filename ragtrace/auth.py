"""API keys, each allowed a set of namespaces: a tenant's key cannot read or write another tenant's data."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from pydantic_settings import BaseSettings, SettingsConfigDict

ALL_NAMESPACES = "*"


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_", extra="ignore", frozen=True)

    # JSON object: API key → namespaces it may use ("*": all), e.g. {"k1": ["team-a"], "admin-key": ["*"]}.
    api_keys: dict[str, list[str]] = {}
    # Only for a deliberately open development setup; with no keys and this off, every request is refused.
    auth_disabled: bool = False


class Principal:
    def __init__(self, namespaces: list[str]) -> None:
        self.namespaces = namespaces

    def authorize(self, namespace: str) -> None:
        if ALL_NAMESPACES not in self.namespaces and namespace not in self.namespaces:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this API key may not use namespace '{namespace}'")


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    authorization = request.headers.get("authorization", "")
    if key is None and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    return key


async def authenticate(request: Request) -> Principal:
    settings: AuthSettings = request.app.state.auth
    if settings.auth_disabled:
        return Principal([ALL_NAMESPACES])
    key = _presented_key(request)
    if key:
        for candidate, namespaces in settings.api_keys.items():
            if hmac.compare_digest(candidate.encode(), key.encode()):
                return Principal(namespaces)
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing or unknown API key: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


Authenticated = Annotated[Principal, Depends(authenticate)]
