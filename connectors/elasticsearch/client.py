"""The one way walstream builds its Elasticsearch clients: the cluster's credentials and TLS from the settings."""

from __future__ import annotations

from typing import Any

from elasticsearch import AsyncElasticsearch, Elasticsearch

from streams.config import ElasticsearchSecurity


def client_options(security: ElasticsearchSecurity | None, url: str) -> dict[str, Any]:
    """Keyword arguments for either client. TLS follows the URL's scheme (https); the CA or the certificate's
    fingerprint pins whom it trusts, and without either the system's CAs are trusted. An http:// address takes
    no TLS options (the start-up check tells when the server wants https)."""
    options: dict[str, Any] = {}
    if security is None:
        return options
    if security.username is not None and security.password is not None:
        options["basic_auth"] = (security.username, security.password.get_secret_value())
    if security.api_key is not None:
        options["api_key"] = security.api_key.get_secret_value()
    if not url.startswith("https://"):
        return options
    if security.ca_file is not None:
        options["ca_certs"] = str(security.ca_file)
    if security.fingerprint is not None:
        options["ssl_assert_fingerprint"] = security.fingerprint
    return options


def new_client(url: str, security: ElasticsearchSecurity | None = None, **kwargs: Any) -> Elasticsearch:
    return Elasticsearch(url, **client_options(security, url), **kwargs)


def new_async_client(url: str, security: ElasticsearchSecurity | None = None, **kwargs: Any) -> AsyncElasticsearch:
    return AsyncElasticsearch(url, **client_options(security, url), **kwargs)
