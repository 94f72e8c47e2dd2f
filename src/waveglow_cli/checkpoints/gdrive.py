"""Google Drive's large-file interstitial: find the request that gets past it.

Drive answers a download of a file it cannot virus-scan with an HTML page (a ``download-form``,
a ``confirm=`` link or a ``download_warning`` cookie) instead of the file; its quota and error
pages are HTML too.  :func:`confirmation_request` tells them apart; the transfer answers the
first kind in the same session and gives up on the source for the others.
"""

from __future__ import annotations

import html
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlparse

from ..errors import SourceFailed

if TYPE_CHECKING:  # requests is imported when a download starts, not with the CLI
    import requests


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict[str, Any]] = []
        self.links: list[str] = []
        self.title = ""
        self._in_title = False
        self._form: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "form":
            self._form = {"id": a.get("id", ""), "action": a.get("action", ""),
                          "method": a.get("method", "get").lower(), "fields": {}}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            if a.get("type", "text").lower() in ("hidden", "text"):
                self._form["fields"][a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", ""):
            self.links.append(a["href"])
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def confirmation_request(page: str, response: requests.Response
                         ) -> tuple[str, dict[str, str] | None]:
    """The request that gets past Google Drive's "can't scan this file for viruses" page:
    the ``download-form``'s action with its hidden fields (id, export, confirm, uuid, ...),
    else a ``confirm=`` link, else the ``download_warning`` cookie's token.  Raises
    :class:`SourceFailed` for any other HTML page (Drive's quota page, a login page, ...)."""
    parser = _PageParser()
    try:
        parser.feed(page)
    except Exception:  # noqa: BLE001 - malformed HTML is just "not a confirmation page"
        pass
    here = response.url
    forms = [f for f in parser.forms if f["id"] == "download-form"] or \
            [f for f in parser.forms if "confirm" in f["fields"] and f["method"] == "get"]
    if forms:
        form = forms[0]
        target = urljoin(here, html.unescape(form["action"]) or here)
        _check_redirect(here, target)
        return target, dict(form["fields"])
    if parser.links:
        target = urljoin(here, html.unescape(parser.links[0]))
        _check_redirect(here, target)
        return target, None
    token = next((v for k, v in response.cookies.items() if k.startswith("download_warning")), None)
    if token:
        return here, {"confirm": token}
    title = " ".join(parser.title.split())
    lowered = page.lower()
    if "quota" in lowered or "too many users" in lowered:
        raise SourceFailed("Google Drive refused the download: its download quota for this file "
                            "is exceeded (too many downloads recently); try again later")
    raise SourceFailed(f"got an HTML page instead of the file"
                        f"{f' ({title!r})' if title else ''}: an error, login or quota page")


def _check_redirect(here: str, target: str) -> None:
    old, new = urlparse(here), urlparse(target)
    if new.scheme not in ("http", "https") or (old.scheme == "https" and new.scheme != "https"):
        raise SourceFailed(f"refusing to follow a confirmation page to {target!r}")



__all__ = ["confirmation_request"]
