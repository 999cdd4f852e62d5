"""Who may reach the service: the warning for an exposed service without a key, and the default Host names."""

from __future__ import annotations

__all__ = ["exposure_warning", "default_allowed_hosts"]


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """What to warn about when a service without an API key listens beyond this machine (None: nothing)."""
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        return (f"serving on {host} without an API key: anyone who can reach this port can use the model. Pass"
                " --api-key-file FILE (or set HEADSTART_API_KEY).")
    return None


def default_allowed_hosts(host: str) -> list[str]:
    """The Host header values a service bound to ``host`` accepts by default (a DNS-rebinding guard)."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]  # every interface: the operator chose exposure; --api-key is what protects it
    names = {host}
    if host in ("127.0.0.1", "localhost", "::1"):
        names |= {"127.0.0.1", "localhost", "::1", "[::1]"}
    return sorted(names)
