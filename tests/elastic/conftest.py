"""Fixtures for the Elasticsearch output against the real Elasticsearch of `services/up`."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from stockade.sensor.elastic import templates
from stockade.sensor.elastic.config import ElasticConfig
from stockade.sensor.elastic.writer import ElasticOutput
from stockade.sensor.logs import formatter
from tests.integration.conftest import SERVICES_UP, es, services_env, unique

__all__ = ["es", "services_env", "unique"]  # fixtures, shared with tests/integration


def stop_elasticsearch(env: dict[str, str]) -> None:
    """Stop only Elasticsearch (as services/down does: TERM, wait), keeping its data."""
    pidfile = Path(env["STOCKADE_STATE"]) / "elasticsearch" / "run" / "es.pid"
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    for _ in range(600):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def start_elasticsearch() -> None:
    """services/up starts what is not running: here, Elasticsearch alone."""
    subprocess.run([str(SERVICES_UP)], capture_output=True, check=True, timeout=300)


def config(env: dict[str, str], namespace: str, **kw: object) -> ElasticConfig:
    """Settings for the services' Elasticsearch (credentials when security is on)."""
    ca = env.get("ELASTICSEARCH_CA_CERTS")
    base = ElasticConfig(
        env["ELASTICSEARCH_URL"], namespace, username=env.get("ELASTICSEARCH_USERNAME"),
        password=env.get("ELASTICSEARCH_PASSWORD"), ca_certs=Path(ca) if ca else None,
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def said_into(name: str) -> logging.Logger:
    """A logger of its own writing the standalone sensor's plain lines into a StringIO."""
    log = logging.getLogger(f"tests.elastic.{name}")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(formatter(json_lines=False))
    log.handlers[:] = [handler]
    return log


def logged(out: ElasticOutput) -> str:
    """What the output said (the fixture's outputs log into a StringIO: `said_into`)."""
    stream = getattr(out.log.handlers[0], "stream", None)
    assert isinstance(stream, io.StringIO)
    return stream.getvalue()


def wait_delivered(out: ElasticOutput, n: int, timeout: float = 120.0) -> dict[str, int]:
    """Wait until n documents are final (delivered or dead-lettered) and nothing waits."""
    deadline = time.monotonic() + timeout
    while True:
        s = out.stats()
        done = s["es_delivered"] + s["es_dead_letter"]
        if done >= n and s["es_queued"] == 0 and s["es_spooled"] == 0:
            return s
        assert time.monotonic() < deadline, (s, logged(out))
        time.sleep(0.2)


@pytest.fixture(scope="session", autouse=True)
def _templates_removed(es: Elasticsearch) -> Iterator[None]:
    """The templates the outputs install are cluster-wide: removed after the session."""
    yield
    es.options(ignore_status=404).indices.delete_index_template(name="logs-cloud_defend.*")
    es.options(ignore_status=404).cluster.delete_component_template(name=templates.COMPONENT)


@pytest.fixture
def namespace(es: Elasticsearch, unique: str) -> Iterator[str]:
    """A data-stream namespace of this test's own; its data streams deleted afterwards."""
    yield f"t{unique}"
    es.options(ignore_status=404).indices.delete_data_stream(name=f"logs-cloud_defend.*-t{unique}")


OutputFactory = Callable[..., ElasticOutput]


@pytest.fixture
def output(services_env: dict[str, str], namespace: str, tmp_path: Path) -> Iterator[OutputFactory]:
    """make(**config_overrides, spool_max_bytes=...) → an ElasticOutput logging to a StringIO,
    spooling to tmp_path/spool; closed after the test."""
    yield from outputs(services_env, namespace, tmp_path)


def outputs(env: dict[str, str], namespace: str, tmp_path: Path) -> Iterator[OutputFactory]:
    """The `output` fixture's factory, for the Elasticsearch that `env` names."""
    made: list[ElasticOutput] = []

    def make(spool_max_bytes: int = 1 << 30, drain_s: float = 5.0, **kw: object) -> ElasticOutput:
        out = ElasticOutput(
            config(env, namespace, **kw), tmp_path / "spool",
            spool_max_bytes=spool_max_bytes, drain_s=drain_s, log=said_into(str(len(made))),
        )  # fmt: skip
        made.append(out)
        return out

    yield make
    for out in made:
        out.close()
