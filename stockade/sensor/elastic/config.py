"""How to reach Elasticsearch: URL, credentials and CA bundle from flags, environment or files.

Secrets are never command-line values: flags name files (a mounted Secret), the
environment may carry the values themselves. Precedence: flag (file) > `*_FILE` variable
> value variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stockade.sensor.elastic.templates import NamespaceError, check_namespace

__all__ = ["ConfigError", "ElasticConfig", "add_arguments"]


class ConfigError(Exception):
    """Settings that can't work; the message names the setting and what is wrong."""


def _secret_file(flag_file: Path | None, env: Mapping[str, str], name: str) -> Path | None:
    return flag_file or (Path(env[f"{name}_FILE"]) if env.get(f"{name}_FILE") else None)


def _read_secret(path: Path, what: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: can't read the {what}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{path}: empty {what}")
    return value


@dataclass(frozen=True)
class ElasticConfig:
    url: str
    namespace: str = "default"
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    ca_certs: Path | None = None
    api_key_file: Path | None = None  # read again after an authentication failure
    password_file: Path | None = None
    request_timeout: float = 10.0

    @classmethod
    def from_args(
        cls, url: str | None, args: argparse.Namespace, env: Mapping[str, str] = os.environ
    ) -> ElasticConfig:
        url = url or env.get("ELASTICSEARCH_URL")
        if not url:
            raise ConfigError("no Elasticsearch URL: give elasticsearch:URL or ELASTICSEARCH_URL")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{url!r}: an Elasticsearch URL starts with http:// or https://")
        key_file = _secret_file(args.es_api_key_file, env, "ELASTICSEARCH_API_KEY")
        api_key = (
            _read_secret(key_file, "API key") if key_file else env.get("ELASTICSEARCH_API_KEY")
        )
        username = args.es_username or env.get("ELASTICSEARCH_USERNAME") or None
        password_file = _secret_file(args.es_password_file, env, "ELASTICSEARCH_PASSWORD")
        password = (
            _read_secret(password_file, "password")
            if password_file
            else env.get("ELASTICSEARCH_PASSWORD")
        )
        if api_key and username:
            raise ConfigError("both an API key and a username given: use one")
        if bool(username) != bool(password):
            raise ConfigError("basic auth needs both a username and a password")
        ca = args.es_ca_certs or (
            Path(env["ELASTICSEARCH_CA_CERTS"]) if env.get("ELASTICSEARCH_CA_CERTS") else None
        )
        if ca is not None and not ca.is_file():
            raise ConfigError(f"{ca}: CA bundle not found")
        if ca is not None and not url.startswith("https://"):
            raise ConfigError(f"{url}: a CA bundle is for TLS: use an https:// URL")
        try:
            namespace = check_namespace(args.es_namespace)
        except NamespaceError as exc:
            raise ConfigError(f"--es-namespace {exc}") from None
        return cls(url, namespace, api_key or None, username, password or None, ca,
                   key_file, password_file)  # fmt: skip

    def reread_secrets(self) -> ElasticConfig:
        """The same settings with the secret files read again (a rotated Secret)."""
        try:
            return replace(
                self,
                api_key=_read_secret(self.api_key_file, "API key")
                if self.api_key_file else self.api_key,
                password=_read_secret(self.password_file, "password")
                if self.password_file else self.password,
            )  # fmt: skip
        except ConfigError:
            return self

    def client(self) -> Any:
        """A client that does not retry by itself: the writer owns retries and backoff."""
        from elasticsearch import Elasticsearch

        options: dict[str, Any] = {
            "request_timeout": self.request_timeout,
            "max_retries": 0,
            "retry_on_timeout": False,
        }
        if self.api_key:
            options["api_key"] = self.api_key
        if self.username and self.password:
            options["basic_auth"] = (self.username, self.password)
        if self.ca_certs:
            options["ca_certs"] = str(self.ca_certs)
        return Elasticsearch(self.url, **options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The connection flags shared by `stockade sensor` and `stockade es-setup`."""
    g = parser.add_argument_group("Elasticsearch (also ELASTICSEARCH_URL, _API_KEY[_FILE], "
                                  "_USERNAME, _PASSWORD[_FILE], _CA_CERTS)")  # fmt: skip
    g.add_argument("--es-api-key-file", type=Path, metavar="FILE",
                   help="file holding the encoded API key")  # fmt: skip
    g.add_argument("--es-username", metavar="NAME", help="basic auth user")
    g.add_argument("--es-password-file", type=Path, metavar="FILE",
                   help="file holding the basic auth password")  # fmt: skip
    g.add_argument("--es-ca-certs", type=Path, metavar="FILE", help="CA bundle (PEM) for TLS")
    g.add_argument("--es-namespace", default="default", metavar="NAME",
                   help="data streams logs-cloud_defend.*-NAME (default: default)")  # fmt: skip
