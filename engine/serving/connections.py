"""Connection-level limits for the server, as a subclass of uvicorn's h11 protocol (`uvicorn.Config(http=...)`).

uvicorn closes idle keep-alive connections, but it has no deadline for a request's headers (a client that dribbles
a header a minute holds its connection forever: slowloris), its concurrency limit answers 503 only once a request has
arrived, and its malformed-request answer is plain text. Here:
- headers must be complete within `header_timeout` seconds of the connection opening (or of the previous response),
  otherwise the connection is closed (also when, after a response, the client keeps dribbling a body the route
  never read);
- a connection beyond `max_connections` is answered 503 at once, with OpenAI's JSON error body, and closed;
- a malformed request line or header is answered 400 with OpenAI's JSON error body.
The request body has its own deadline in the app (`app.read_body`), which also enforces the size limit.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .protocol import APIError


def _send_error(proto: H11Protocol, e: APIError) -> None:
    """Write one JSON error response on a connection that has no request cycle, then close it."""
    body = json.dumps(e.body()).encode()
    try:
        for event in (h11.Response(status_code=e.status, headers=[(b"content-type", b"application/json"),
                                                                  (b"content-length", str(len(body)).encode()),
                                                                  (b"connection", b"close")]),
                      h11.Data(data=body), h11.EndOfMessage()):
            proto.transport.write(proto.conn.send(event))
    except h11.LocalProtocolError:  # h11 cannot answer in this state (e.g. a response already started)
        pass
    proto.transport.close()


def protocol_class(header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """An H11Protocol subclass with these limits (uvicorn builds one instance per connection)."""

    class LimitedH11Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                _send_error(self, APIError(f"the server is at its limit of {max_connections} connections; retry "
                                           "later", 503, "server_error", code="too_many_connections"))
                return
            self._arm()

        def _arm(self):
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._header_timeout)

        def _disarm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _busy(self) -> bool:
            # a request's headers are in and its response is not finished: the app's own deadlines apply
            return self.conn.our_state in (h11.SEND_RESPONSE, h11.SEND_BODY)

        def _header_timeout(self):
            self._header_timer = None
            if not self._busy() and not self.transport.is_closing():
                self.logger.info("closing a connection that sent no complete request in %.0f s", header_timeout)
                self.transport.close()

        def data_received(self, data: bytes):
            if not self._busy():
                self._arm()  # the clock started at connect (or at the previous response); bytes do not reset it
            super().data_received(data)
            if self._busy():
                self._disarm()  # the headers are complete

        def on_response_complete(self):
            super().on_response_complete()
            # the keep-alive timer closes a silent connection, but any byte cancels it: a client dribbling the next
            # request's headers, or the rest of a body the app never read, is closed by ours
            self._disarm()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str):
            _send_error(self, APIError(f"malformed HTTP request ({msg.rstrip('.')})", 400,
                                       code="malformed_request"))

    return LimitedH11Protocol
