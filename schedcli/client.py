"""The REST API over HTTP (httpx): JSON in and out, the API's refusals and an absent
server turned into `ApiRefused` and `ServerUnreachable`. The token goes only into the
Authorization header; no message made here contains it."""

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from .errors import ApiRefused, ServerUnreachable

TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# A followed log may stay quiet for as long as its job prints nothing.
FOLLOW_TIMEOUT = httpx.Timeout(None, connect=5.0)


def _answer(response: httpx.Response):
    if response.status_code >= 500:
        raise ServerUnreachable(f"the server failed ({response.status_code})")
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.status_code >= 400:
        raise ApiRefused(response.status_code, body)
    return body


class Api:
    def __init__(self, url: str, token: str | None = None):
        headers = {"Accept": "application/json", "User-Agent": "sched"}
        if token:
            headers["Authorization"] = f"Token {token}"
        self.url = url
        # Certificates are loaded only for https: they cost a plain-http command ~0.1 s.
        self._http = httpx.Client(
            base_url=f"{url}/api/",
            headers=headers,
            timeout=TIMEOUT,
            verify=url.startswith("https:"),
        )

    def close(self) -> None:
        self._http.close()

    @contextmanager
    def _reaching(self):
        try:
            yield
        except httpx.TransportError as error:
            # The exception's text names the host, never the headers.
            raise ServerUnreachable(
                f"cannot reach {self.url}: {error.__class__.__name__}"
            ) from None

    def get(self, path: str, **params):
        params = {k: v for k, v in params.items() if v is not None}
        with self._reaching():
            return _answer(self._http.get(path, params=params))

    def post(self, path: str, json=None, **params):
        with self._reaching():
            return _answer(self._http.post(path, json=json, params=params))

    def patch(self, path: str, json=None):
        with self._reaching():
            return _answer(self._http.patch(path, json=json))

    def pages(self, path: str, **params) -> Iterator[dict]:
        """Every item of a paged list, following its `next` links."""
        page = self.get(path, **params)
        while True:
            yield from page["results"]
            if not page.get("next"):
                return
            with self._reaching():
                page = _answer(self._http.get(page["next"]))

    @contextmanager
    def stream_text(self, path: str, **params) -> Iterator[Iterator[str]]:
        """A text answer as it arrives, piece by piece."""
        with (
            self._reaching(),
            self._http.stream(
                "GET", path, params=params, timeout=FOLLOW_TIMEOUT, headers={"Accept": "*/*"}
            ) as response,
        ):
            if response.status_code >= 400:
                response.read()
                _answer(response)
            yield self._pieces(response)

    def _pieces(self, response: httpx.Response) -> Iterator[str]:
        with self._reaching():
            yield from response.iter_text()
