"""services/up against Elasticsearch's own user: the files root writes when it starts
Elasticsearch again are not theirs to redirect."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.elastic.conftest import start_elasticsearch, stop_elasticsearch

pytestmark = pytest.mark.integration
ES_USER = os.environ.get("STOCKADE_ES_USER", "stockade-es")


def test_a_link_the_elasticsearch_user_plants_is_not_followed_by_root(
    services_env: dict[str, str],
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: services/up runs Elasticsearch as its own user")
    home = Path(services_env["STOCKADE_STATE"]) / "elasticsearch"
    victim = Path(f"/tmp/stockade-victim-{os.urandom(4).hex()}")  # root's, outside the state
    victim.write_text("root's\n")
    try:
        planted = f"rm -f {home}/mode && ln -s {victim} {home}/mode"
        subprocess.run(["runuser", "-u", ES_USER, "--", "sh", "-c", planted], check=False)
        stop_elasticsearch(services_env)
        start_elasticsearch()
        assert victim.read_text() == "root's\n"
        assert os.lstat(home).st_uid == 0 and not (home / "mode").is_symlink()
    finally:
        victim.unlink()
