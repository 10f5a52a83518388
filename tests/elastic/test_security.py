"""Security on (TLS with the dev CA, API keys), against a second set of services of its own:
`STOCKADE_ES_SECURITY=1 services/up` on other ports and another state directory, started
for this module and removed after it (~25 s)."""

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

from tests.integration.conftest import REPO, SERVICES_UP, parse_exports

from .conftest import OutputFactory, logged, outputs, wait_delivered
from .records import docs

pytestmark = pytest.mark.integration


SECURE = {
    "STOCKADE_ES_SECURITY": "1",
    "STOCKADE_STATE": "/tmp/stockade-services-secure",
    "STOCKADE_ETCD_PORT": "12479",
    "STOCKADE_ETCD_PEER_PORT": "12480",
    "STOCKADE_APISERVER_PORT": "16543",
    "STOCKADE_ES_PORT": "19201",
    "STOCKADE_ES_TRANSPORT_PORT": "19301",
}


@pytest.fixture(scope="module")
def secure() -> Iterator[dict[str, str]]:
    env = {**os.environ, **SECURE}
    down = REPO / "services" / "down"
    subprocess.run([str(down)], env=env, capture_output=True, check=False)  # a stale one
    up = subprocess.run(
        [str(SERVICES_UP)], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if up.returncode != 0:
        pytest.fail(f"services/up with security on failed:\n{up.stderr[-4000:]}", pytrace=False)
    try:
        yield parse_exports(up.stdout)
    finally:
        subprocess.run([str(down)], env=env, capture_output=True, check=False)


@pytest.fixture(scope="module")
def secure_es(secure: dict[str, str]) -> Iterator[Elasticsearch]:
    client = Elasticsearch(
        secure["ELASTICSEARCH_URL"],
        basic_auth=(secure["ELASTICSEARCH_USERNAME"], secure["ELASTICSEARCH_PASSWORD"]),
        ca_certs=secure["ELASTICSEARCH_CA_CERTS"],
        request_timeout=30,
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def output(secure: dict[str, str], namespace: str, tmp_path: Path) -> Iterator[OutputFactory]:
    yield from outputs(secure, namespace, tmp_path)


@pytest.fixture
def sensor_key(secure_es: Elasticsearch, unique: str) -> Iterator[str]:
    """An API key with only what the sensor needs to write."""
    key = secure_es.security.create_api_key(name=f"sensor-{unique}", role_descriptors={"w": {
        "indices": [{"names": ["logs-cloud_defend.*"],
                     "privileges": ["create_doc", "auto_configure"]}]}})  # fmt: skip
    yield str(key["encoded"])
    secure_es.security.invalidate_api_key(ids=[key["id"]])


def test_es_setup_then_wrong_key_one_error_spools_and_recovers(
    secure: dict[str, str], sensor_key: str, output: OutputFactory, secure_es: Elasticsearch,
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
    secure_es.indices.refresh(index=f"logs-cloud_defend.alerts-{namespace}")
    assert secure_es.count(index=f"logs-cloud_defend.alerts-{namespace}")["count"] == 50
