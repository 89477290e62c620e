"""The HTTP API's contract as an outsider checks it: schemathesis (every check, every phase,
the stateful one included) against ``python -m crypto_ml.api`` on its own embedded cluster,
with keys, over HTTP. Bounded (10 examples per operation, 50 s); it must find nothing: no 5xx, no status
or body the OpenAPI description does not declare, no invalid body accepted, and no valid body
refused but for what tests/schemathesis.toml explains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_api_server import KEY, embedded_server

pytestmark = pytest.mark.integration
ST = Path(sys.executable).parent / "st"
CONFIG = ROOT / "tests" / "schemathesis.toml"


@pytest.mark.skipif(not ST.exists(), reason="schemathesis not installed (pip install -e '.[dev]')")
def test_schemathesis_finds_nothing_on_the_live_api(tmp_path: Path) -> None:
    with embedded_server(tmp_path, coins=("Bitcoin", "Ethereum"),
                         CRYPTO_ML_API_MAX_WAIT="2") as server:
        run = subprocess.run(
            [str(ST), "--config-file", str(CONFIG), "run", f"{server.url}/openapi.json",
             "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
             "--header", f"Authorization: Bearer {KEY}", "--max-examples", "10",
             "--max-time", "20", "--generation-deterministic", "--request-timeout", "20"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in report, report[-3000:]
