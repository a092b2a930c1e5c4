"""`GET /metrics`: the rack's numbers for Prometheus (auth: the rack password, or RACK_METRICS_TOKEN)."""

from __future__ import annotations

from flask import Blueprint, Flask, current_app

from rack import metrics

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    registry = current_app.extensions["rack_metrics"]
    return metrics.render(registry), 200, {"Content-Type": metrics.CONTENT_TYPE}


def init_app(app: Flask) -> None:
    app.extensions["rack_metrics"] = metrics.registry_for(app.extensions["rack"])
    app.register_blueprint(bp)
