"""Security on (TLS with the dev CA, API keys): run with `STOCKADE_ES_SECURITY=1` after a
`services/down` (docs/testing.md, "Security on"); skipped when the cluster has no security."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from .conftest import OutputFactory, logged, wait_delivered
from .records import docs

pytestmark = pytest.mark.integration


@pytest.fixture
def secure(services_env: dict[str, str]) -> dict[str, str]:
    if not services_env.get("ELASTICSEARCH_PASSWORD"):
        pytest.skip("Elasticsearch runs without security (STOCKADE_ES_SECURITY=1 services/up)")
    return services_env


@pytest.fixture
def sensor_key(es: Elasticsearch, unique: str) -> Iterator[str]:
    """An API key with only what the sensor needs to write."""
    key = es.security.create_api_key(name=f"sensor-{unique}", role_descriptors={"w": {
        "indices": [{"names": ["logs-cloud_defend.*"],
                     "privileges": ["create_doc", "auto_configure"]}]}})  # fmt: skip
    yield str(key["encoded"])
    es.security.invalidate_api_key(ids=[key["id"]])


def test_es_setup_then_wrong_key_one_error_spools_and_recovers(
    secure: dict[str, str], sensor_key: str, output: OutputFactory, es: Elasticsearch,
    namespace: str, tmp_path: Path,
) -> None:  # fmt: skip
    env = {k: v for k, v in secure.items() if k.startswith("ELASTICSEARCH_")}
    setup = subprocess.run(
        [sys.executable, "-m", "stockade.cli", "es-setup"],
        capture_output=True, text=True, check=False, env={**os.environ, **env},
    )  # fmt: skip
    assert setup.returncode == 0, setup.stderr
    assert "installed logs-cloud_defend@stockade and logs-cloud_defend.process" in setup.stdout
    key_file = tmp_path / "api-key"
    key_id = base64.b64decode(sensor_key).decode().split(":")[0]
    key_file.write_text(base64.b64encode(f"{key_id}:wrong".encode()).decode())
    out = output(username=None, password=None, api_key_file=key_file,
                 api_key=key_file.read_text())  # fmt: skip
    for d in docs(50, alert=True):
        out.write(d)
    deadline = time.monotonic() + 30
    while out.stats()["es_failed_requests"] < 3:
        assert time.monotonic() < deadline, logged(out)
        time.sleep(0.2)
    said = logged(out).splitlines()
    assert len(said) == 1, said  # one clear error, not one per retry
    assert said[0].startswith(
        "stockade sensor: elasticsearch: authentication failed (401): the API key or password "
        "is wrong"
    ), said
    assert said[0].endswith("; spooling to " + str(tmp_path / "spool") + " and retrying")
    assert out.stats()["es_spooled"] == 50
    key_file.write_text(sensor_key + "\n")  # the Secret is fixed
    s = wait_delivered(out, 50)
    assert s["es_delivered"] == 50 and s["es_dropped_alerts"] == 0
    text = logged(out)
    assert "the credentials changed on disk; using them" in text
    assert "can't install the index templates (not allowed (403)" in text  # only create_doc
    assert "delivering again" in text
    es.indices.refresh(index=f"logs-cloud_defend.alerts-{namespace}")
    assert es.count(index=f"logs-cloud_defend.alerts-{namespace}")["count"] == 50
