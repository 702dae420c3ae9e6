"""The JSON error the HTTP guards answer with, shaped like the API's own errors so clients parse them alike."""

from __future__ import annotations

from starlette.responses import JSONResponse


def error_response(status: int, message: str, loc: tuple[str, ...],
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message, "detail": [{"loc": [...], "msg", "type"}]}``; ``loc`` names the header or body."""
    detail = [{"loc": list(loc), "msg": message, "type": "security_error"}]
    return JSONResponse({"error": message, "detail": detail}, status_code=status, headers=headers)
