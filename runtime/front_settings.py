"""What the device's and the server's HTTP fronts are configured with alike: how long a client
may take to send a request's headers, and the API keys a request must carry."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from semlink.runtime.security import load_api_keys


class HttpFrontSettings(BaseSettings):
    """The HTTP front's fields; :class:`~semlink.device.settings.DeviceSettings` and
    :class:`~semlink.server.settings.ServerSettings` add their own (each with its own
    environment prefix)."""

    http_header_timeout_s: float = Field(
        10.0,
        gt=0.0,
        le=600.0,
        description="HTTP clients must send a request's headers within this many seconds",
    )
    api_keys: SecretStr | None = Field(
        None, description="comma-separated API keys required on HTTP (Authorization: Bearer)"
    )
    api_keys_file: Path | None = Field(None, description="file of API keys, one per line")

    def api_key_list(self) -> list[str]:
        """The keys from ``api_keys`` and ``api_keys_file`` together (none: the front is open)."""
        inline = self.api_keys.get_secret_value() if self.api_keys else None
        return load_api_keys(inline, self.api_keys_file)
