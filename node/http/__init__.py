"""The HTTP side: the JSON API, the worklist page, health and metrics (FastAPI on uvicorn,
started by `ichtriage serve --http-port`)."""
