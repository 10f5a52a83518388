"""`stockade es-setup`: install the index templates once, as a user allowed to (the sensor's
own API key then needs only `create_doc` and `auto_configure` on `logs-cloud_defend.*`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from stockade.sensor.elastic import config, templates

__all__ = ["register"]


def cmd_es_setup(args: argparse.Namespace) -> int:
    from elastic_transport import TransportError
    from elasticsearch import ApiError

    try:
        cfg = config.ElasticConfig.from_args(args.url, args)
    except config.ConfigError as exc:
        print(f"stockade es-setup: {exc}", file=sys.stderr)
        return 2
    client = cfg.client()
    try:
        templates.install(client)
    except (ApiError, TransportError) as exc:
        print(f"stockade es-setup: {cfg.url}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    names = ", ".join(templates.index_templates())
    print(f"installed {templates.COMPONENT} and {names} (version {templates.TEMPLATE_VERSION})")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "es-setup", help="install the Elasticsearch index templates the sensor writes through"
    )
    p.add_argument("url", nargs="?", metavar="URL", help="default: $ELASTICSEARCH_URL")
    config.add_arguments(p)
    p.set_defaults(run=cmd_es_setup)
