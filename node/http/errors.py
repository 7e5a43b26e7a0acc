"""Errors of the HTTP side (imported without FastAPI or uvicorn)."""


class HttpStartError(RuntimeError):
    """uvicorn did not start listening (the port is taken, the address is not ours...)."""
