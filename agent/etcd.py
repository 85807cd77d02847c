"""etcd v3 client factory for the agent and the server (pyetcd, the maintained python-etcd3 fork).

Works around pyetcd's pitfalls (DESIGN §5):

* endpoints are made with ``time_retry=0`` (else a node that failed once is shunned for 300 s), and
  this wrapper moves to the next endpoint itself when one does not answer;
* with user/password over plain HTTP the token goes in the metadata only (``call_credentials =
  None``: gRPC refuses call credentials on an insecure channel);
* tokens expire: on "invalid auth token" the client is rebuilt (re-authenticated) and the call is
  made once more.

``EtcdClient`` exposes what :mod:`agent.locksmith` needs (``get``, ``transaction``,
``transactions``) plus ``put``/``delete``/``watch``-style pass-through for everything else.
"""
from __future__ import annotations

import threading
from urllib.parse import urlsplit

DEFAULT_TIMEOUT = 5.0


def parse_endpoints(endpoints) -> list[tuple[str, str, int]]:
    """``"http://a:2379,https://b:2379"`` or a list → [(scheme, host, port)]."""
    if isinstance(endpoints, str):
        endpoints = endpoints.split(",")
    out = []
    for raw in endpoints or []:
        raw = (raw or "").strip()
        if not raw:
            continue
        if "://" not in raw:
            raw = "http://" + raw
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"etcd endpoint {raw!r} is not http(s)://HOST:PORT")
        out.append((parts.scheme, parts.hostname, parts.port or 2379))
    return out


def _is_auth_expired(exc: BaseException) -> bool:
    text = str(exc)
    details = getattr(exc, "details", None)
    if callable(details):
        try:
            text += " " + (details() or "")
        except Exception:  # pragma: no cover
            pass
    return "invalid auth token" in text or "auth token" in text.lower() and "invalid" in text.lower()


def _is_unavailable(exc: BaseException) -> bool:
    from pyetcd import exceptions as pe
    if isinstance(exc, (pe.ConnectionFailedError, pe.ConnectionTimeoutError, pe.NoServerAvailableError,
                        pe.InternalServerError)):
        return True
    import grpc
    if isinstance(exc, grpc.RpcError):
        try:
            return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        except Exception:  # pragma: no cover
            return False
    return False


class EtcdClient:
    """A pyetcd client over several endpoints with failover, auth re-login and TLS."""

    def __init__(self, endpoints, *, user: str | None = None, password: str | None = None,
                 ca: str | None = None, cert: str | None = None, key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        self.endpoints = parse_endpoints(endpoints)
        if not self.endpoints:
            raise ValueError("no etcd endpoints configured")
        if (cert is None) != (key is None):
            raise ValueError("an etcd client certificate needs both cert and key")
        self.user, self.password = (user or None), (password or None)
        if (self.user is None) != (self.password is None):
            raise ValueError("etcd authentication needs both a user and a password")
        self.ca, self.cert, self.key = ca, cert, key
        self.timeout = timeout
        self._lock = threading.Lock()
        self._client = None
        self._index = 0

    # -- building ---------------------------------------------------------------------------------
    def _creds(self):
        import grpc

        def read(path):
            with open(path, "rb") as fh:
                return fh.read()
        return grpc.ssl_channel_credentials(read(self.ca) if self.ca else None,
                                            read(self.key) if self.key else None,
                                            read(self.cert) if self.cert else None)

    def _build(self):
        import pyetcd
        from pyetcd.client import Endpoint
        eps = []
        order = self.endpoints[self._index:] + self.endpoints[:self._index]
        for scheme, host, port in order:
            secure = scheme == "https" or bool(self.ca)
            eps.append(Endpoint(host, port, secure=secure, creds=self._creds() if secure else None,
                                time_retry=0))
        client = pyetcd.MultiEndpointEtcd3Client.__new__(pyetcd.MultiEndpointEtcd3Client)
        # Build by hand so the first endpoint is the one we want (the constructor picks at random).
        try:
            pyetcd.MultiEndpointEtcd3Client.__init__(client, endpoints=eps, timeout=self.timeout,
                                                      failover=True)
            client._current_endpoint_label = eps[0].netloc
            if self.user is not None:
                self._authenticate(client, secure=eps[0].secure)
        except Exception:
            for ep in eps:
                ep.close()
            raise
        return client

    def _authenticate(self, client, secure: bool) -> None:
        import grpc
        from pyetcd import etcdrpc
        from pyetcd.client import EtcdTokenCallCredentials
        try:
            resp = client.authstub.Authenticate(
                etcdrpc.AuthenticateRequest(name=self.user, password=self.password), self.timeout)
        except grpc.RpcError as exc:
            client._manage_grpc_errors(exc)
            raise
        client.metadata = (("token", resp.token),)
        # Over plain HTTP gRPC refuses call credentials: the metadata carries the token instead.
        client.call_credentials = (grpc.metadata_call_credentials(EtcdTokenCallCredentials(resp.token))
                                   if secure else None)

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def _reset(self, *, rotate: bool) -> None:
        with self._lock:
            old, self._client = self._client, None
            if rotate:
                self._index = (self._index + 1) % len(self.endpoints)
        if old is not None:
            try:
                old.close()
            except Exception:  # pragma: no cover
                pass

    def close(self) -> None:
        self._reset(rotate=False)

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------------
    def call(self, name: str, *args, **kwargs):
        """Call NAME on the pyetcd client: re-login once on an expired token, and try each
        endpoint once when one does not answer."""
        relogged = False
        tries = 0
        while True:
            try:
                return getattr(self.client, name)(*args, **kwargs)
            except Exception as exc:
                if self.user is not None and not relogged and _is_auth_expired(exc):
                    relogged = True
                    self._reset(rotate=False)
                    continue
                tries += 1
                if _is_unavailable(exc) and tries < len(self.endpoints):
                    self._reset(rotate=True)
                    continue
                if _is_unavailable(exc):
                    self._reset(rotate=True)     # next call starts on another member
                raise

    @property
    def transactions(self):
        from pyetcd.client import Transactions
        return Transactions()

    def get(self, key, **kwargs):
        return self.call("get", key, **kwargs)

    def transaction(self, compare, success=None, failure=None):
        return self.call("transaction", compare=compare, success=success, failure=failure)

    def put(self, key, value, **kwargs):
        return self.call("put", key, value, **kwargs)

    def delete(self, key, **kwargs):
        return self.call("delete", key, **kwargs)

    def status(self):
        return self.call("status")

    def ping(self) -> bool:
        """True when some endpoint answers (a cheap status call)."""
        try:
            self.status()
            return True
        except Exception:
            return False

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.client, name)


def make_client(endpoints, *, user=None, password=None, ca=None, cert=None, key=None,
                timeout: float = DEFAULT_TIMEOUT) -> EtcdClient:
    return EtcdClient(endpoints, user=user, password=password, ca=ca, cert=cert, key=key, timeout=timeout)
