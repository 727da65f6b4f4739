"""`attnlab serve`: the live attention explorer (an ASGI app on Starlette and uvicorn)."""
