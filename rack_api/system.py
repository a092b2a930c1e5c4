"""`GET /check` (open health check) and `GET /system` (rack info, with a version Convox clients accept)."""

from __future__ import annotations

from flask import Blueprint, Flask

from rack import __version__
from rack_api.params import as_json, rack

bp = Blueprint("system", __name__)
VERSION = __version__


@bp.get("/check")
def check():
    return "ok\n", 200, {"Content-Type": "text/plain"}


@bp.get("/system")
def system():
    settings = rack().settings
    return as_json(
        {
            "count": 1,
            "domain": "",
            "name": settings.name,
            "provider": "local",
            "rack-domain": "",
            "region": "",
            "status": "running",
            "type": "local",
            "version": VERSION,
            "parameters": {
                "MaxUploadBytes": str(settings.max_upload_bytes),
                "Builder": settings.builder,
                "BuildParallel": str(settings.build_parallel),
            },
        }
    )


@bp.get("/auth")
def auth_check():
    return "ok\n", 200, {"Content-Type": "text/plain"}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
