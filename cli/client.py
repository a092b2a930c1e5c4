"""HTTP calls to the rack with the password, turning API errors into one readable line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from cli.settings import Endpoint, current
from rack import __version__

if TYPE_CHECKING:  # imported when a command first talks to the rack: `convox --version` starts sooner
    import requests


class RackClient:
    """A session against one rack endpoint."""

    def __init__(
        self, endpoint: Endpoint | None = None, *, timeout: float | tuple[float, float] = 60
    ) -> None:
        import requests

        self.endpoint = endpoint or current()
        self.session = requests.Session()
        self.session.auth = ("convox", self.endpoint.password)
        self.session.headers["User-Agent"] = f"rack-convox/{__version__}"
        self.timeout = timeout

    def url(self, path: str) -> str:
        return self.endpoint.url + path

    def request(self, method: str, path: str, *, expect_json: bool = True, **kw) -> Any:
        import requests

        kw.setdefault("timeout", self.timeout)
        try:
            resp = self.session.request(method, self.url(path), **kw)
        except requests.ConnectionError as exc:
            raise click.ClickException(
                f"cannot reach the rack at {self.endpoint.url}: {short(exc)}"
            ) from None
        except requests.Timeout:
            raise click.ClickException(f"the rack at {self.endpoint.url} did not answer in time") from None
        check(resp)
        if not expect_json:
            return resp
        return resp.json() if resp.content else None

    def get(self, path: str, **kw) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw) -> Any:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw) -> Any:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw) -> Any:
        return self.request("DELETE", path, expect_json=False, **kw)


def check(resp: requests.Response) -> None:
    """Raise a one-line ClickException for an error answer."""
    if resp.status_code < 400:
        return
    try:
        message = resp.json().get("error") or resp.text
    except ValueError:
        message = resp.text.strip() or resp.reason
    if resp.status_code == 401:
        message = f"{message} (check the rack password: `convox login`)"
    raise click.ClickException(message.strip())


def short(exc: Exception, limit: int = 200) -> str:
    """An exception as one readable piece of text, cut at `limit` characters."""
    text = str(exc) or type(exc).__name__
    return text if len(text) < limit else text[:limit] + "…"
