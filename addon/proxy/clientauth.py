"""Client authentication (`clients:`) as its own mitmproxy addon, registered before
`Orchestrator` so a request that fails it is answered before any routing work.

Regular mode: a CONNECT proves a client key in `Proxy-Authorization`, and every request on
that connection is then that client's; a plain proxied request proves it itself. Reverse
mode: each request carries `Authorization: Bearer <router key>`. Proxy credentials and the
router key are removed before anything is forwarded. Which header proves which client is
`addon.proxy.clients.identify`, a plain function; this class only translates hooks.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, MutableMapping

from mitmproxy import connection, http

from addon.proxy import clients
from addon.proxy.apis import endpoint, error_body
from addon.proxy.view import View

AUTH_META = "orchestrator_auth"  # flow.metadata key: {"client": name} once authenticated
REALM = "local-ai-orchestrator"


class ClientAuth:
    """Refuses requests without a valid client key (407 regular mode, 401 reverse mode) and
    tags the others with the client's name in `flow.metadata[AUTH_META]`."""

    def __init__(self, view: Callable[[], View | None]) -> None:
        """`view()` is the config in force (None before the first load: nothing is checked)."""
        self._view = view
        # a connection authenticated by its CONNECT; the entry goes with the connection
        self.authenticated: MutableMapping[connection.Client, str] = weakref.WeakKeyDictionary()

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """Regular mode: with `clients:` configured, a CONNECT must prove a client key."""
        view = self._view()
        if view is None or not view.config.settings.clients:
            return
        name = clients.identify(flow.request.headers.get("proxy-authorization"),
                                view.client_digests)  # fmt: skip
        if name is None:
            flow.response = auth_required(proxy=True)
            return
        self.authenticated[flow.client_conn] = name

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Strip proxy credentials; with `clients:`, answer 407/401 unless the connection or
        the request proves a client key, else note the client's name on the flow."""
        view = self._view()
        if view is None or flow.response is not None:
            return
        settings = view.config.settings
        req = flow.request
        reverse = settings.mode.startswith("reverse:")
        presented = req.headers.get("authorization" if reverse else "proxy-authorization")
        if not reverse:
            req.headers.pop("proxy-authorization", None)
        if not settings.clients:
            return
        name = self.authenticated.get(flow.client_conn) or clients.identify(
            presented, view.client_digests
        )
        if reverse:
            req.headers.pop("authorization", None)  # a router key, never forwarded
        if name is None:
            ep = endpoint(req.method, req.path)
            flow.response = auth_required(proxy=not reverse, api=ep.api if ep else None)
            return
        flow.metadata[AUTH_META] = {"client": name}


def auth_required(*, proxy: bool, api: str | None = None) -> http.Response:
    """The refusal: 407 with `Proxy-Authenticate` for a proxy, else 401, in the format of
    the request's `api` (OpenAI's error object; Anthropic's for Messages)."""
    where = ("Proxy-Authorization (e.g. HTTPS_PROXY=http://NAME:KEY@host:port)" if proxy
             else "Authorization: Bearer <router key>")  # fmt: skip
    status = 407 if proxy else 401
    body = error_body(api, status, f"this router needs a client key: send {where}; ask its "
                      "operator for one", type_="invalid_request_error",
                      code="client_auth_required")  # fmt: skip
    headers = {"content-type": "application/json"}
    if proxy:
        headers["proxy-authenticate"] = f'Basic realm="{REALM}"'
    return http.Response.make(status, body, headers)
