"""The console's pages. Each view makes one call into `rack`; every page is HTML-escaped by Jinja."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from rack import overview, releases
from rack.builds import lifecycle
from rack.errors import RackError
from rack_api.console import chart, session
from rack_api.console.format import register as register_filters
from rack_api.params import rack

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
register_filters(bp)
OPEN = {"console.login", "console.static"}


@bp.before_request
def guard():
    if request.method == "POST":
        session.check_csrf()
    if request.endpoint in OPEN or session.signed_in():
        return None
    if request.method == "GET":
        return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
    return render_template("console/error.html", status=401, message="sign in first"), 401


@bp.after_request
def headers(response):
    host = request.host
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        f" connect-src 'self' ws://{host} wss://{host}; form-action 'self'; base-uri 'none';"
        " frame-ancestors 'none'"
    )
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@bp.errorhandler(RackError)
def rack_error(exc: RackError):
    return render_template("console/error.html", status=exc.status, message=exc.message), exc.status


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    status = exc.code or 500
    return render_template("console/error.html", status=status, message=exc.description), status


@bp.context_processor
def globals_():
    return {"csrf_token": session.csrf_token, "signed_in": session.signed_in()}


@bp.route("/login", methods=["GET", "POST"])
def login():
    next_url = session.local_next(request.values.get("next"))
    if request.method == "POST":
        if session.sign_in(request.form.get("password", "")):
            return redirect(next_url)
        return render_template("console/login.html", next=next_url, wrong=True), 401
    if session.signed_in():
        return redirect(next_url)
    return render_template("console/login.html", next=next_url, wrong=False)


@bp.post("/logout")
def logout():
    session.sign_out()
    return redirect(url_for("console.login"))


@bp.get("")
@bp.get("/")
def apps():
    return render_template("console/apps.html", apps=overview.list_apps(rack()))


@bp.get("/apps/<app>")
def app_builds(app: str):
    view = overview.app_builds(rack(), app, page=request.args.get("page"))
    return render_template("console/app.html", **view, bars=chart.bars(view["chart"]))


@bp.get("/apps/<app>/builds/<build_id>")
def build(app: str, build_id: str):
    return render_template("console/build.html", **overview.build(rack(), app, build_id))


@bp.get("/apps/<app>/builds/<build_id>/meta")
def build_meta(app: str, build_id: str):
    """The build's details alone, which the page's script swaps in when the log ends."""
    return render_template("console/build_meta.html", **overview.build(rack(), app, build_id))


@bp.route("/apps/<app>/builds/<build_id>/cancel", methods=["GET", "POST"])
def cancel(app: str, build_id: str):
    if request.method == "GET":
        view = overview.build(rack(), app, build_id)
        return _confirm(
            f"Cancel build {build_id} of {app}?", "Cancel the build", back=_build_url(app, build_id), **view
        )
    lifecycle.cancel(rack(), app, build_id)
    flash(f"Build {build_id} is being cancelled.")
    return redirect(_build_url(app, build_id))


@bp.route("/apps/<app>/releases", methods=["GET"])
def app_releases(app: str):
    return render_template("console/releases.html", **overview.app_releases(rack(), app))


@bp.route("/apps/<app>/releases/<release_id>/promote", methods=["GET", "POST"])
def promote(app: str, release_id: str):
    back = url_for("console.app_releases", app=app)
    if request.method == "GET":
        release = releases.get(rack(), app, release_id)
        return _confirm(f"Promote release {release['id']} of {app}?", "Promote", back=back, release=release)
    releases.promote(rack(), app, release_id)
    flash(f"Release {release_id} is now the active release of {app}.")
    return redirect(back)


@bp.route("/apps/<app>/releases/<release_id>/rollback", methods=["GET", "POST"])
def rollback(app: str, release_id: str):
    back = url_for("console.app_releases", app=app)
    if request.method == "GET":
        release = releases.get(rack(), app, release_id)
        title = f"Roll {app} back to release {release['id']}?"
        return _confirm(title, "Roll back", back=back, release=release)
    new = releases.rollback(rack(), app, release_id)
    flash(f"Rolled back: release {new['id']} (a copy of {release_id}) is now active.")
    return redirect(back)


def _build_url(app: str, build_id: str) -> str:
    return url_for("console.build", app=app, build_id=build_id)


def _confirm(title: str, action: str, *, back: str, **context):
    """Ask before acting: a page whose one form does it (POSTed to this same address)."""
    return render_template("console/confirm.html", title=title, action=action, back=back, **context)
