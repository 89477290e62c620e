"""The HTTP API's contract, on the in-process backend (no broker): bodies, errors, auth, caps,
metrics and the OpenAPI description. The same routes on the real cluster are in
tests/test_api_cluster.py."""

from __future__ import annotations

import inspect
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from api_support import client, closes, write_coins
from conftest import ROOT
from fastapi.routing import APIRoute

from crypto_ml.api.__main__ import check_exposure
from crypto_ml.api.app import create_app
from crypto_ml.api.service import InProcessRuns
from crypto_ml.core.errors import ConfigError
from crypto_ml.core.settings import Settings
from crypto_ml.models import get_model


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_coins(tmp_path / "prices")


def make(data: Path, **settings: Any) -> Any:
    return client(create_app(Settings(data_dir=data, **settings), InProcessRuns()))


def test_coin_forecast_is_the_models_forecast_with_send_tasks_fields(data: Path) -> None:
    api = make(data)
    reply = api.post("/v1/forecasts", json={"coins": ["alpha"], "model": "linear",
                                            "horizon": 4})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["status"] == "done" and body["failed"] == {} and body["id"]
    result = body["results"]["alpha"]["linear"]
    expected = get_model("linear").fit(closes(data, "alpha")).forecast(4)
    np.testing.assert_allclose(result["forecast"], expected, rtol=0, atol=0)
    assert {"coin", "model", "horizon", "forecast", "last_date", "n_points", "fit_seconds",
            "worker", "device"} <= set(result)
    assert result["last_date"] == "2020-04-29" and result["n_points"] == 120
    # a model's name in any case, as the command line and jobs take it
    again = api.post("/v1/forecasts", json={"coins": ["alpha"], "model": "Linear", "horizon": 4})
    assert again.status_code == 200 and list(again.json()["results"]["alpha"]) == ["linear"]


def test_own_series_and_several_models(data: Path) -> None:
    reply = make(data).post("/v1/forecasts", json={
        "series": {"mine": [1.0, 2.0, 3.0, 4.0]}, "model": ["naive", "linear"], "horizon": 2})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]["mine"]
    assert results["naive"]["forecast"] == [4.0, 4.0]
    np.testing.assert_allclose(results["linear"]["forecast"], [5.0, 6.0])
    assert results["linear"]["last_date"] is None


@pytest.mark.parametrize(("body", "loc", "words"), [
    ({"coins": ["nosuch"], "model": "linear"}, ["body", "coins", 0],
     "unknown coin 'nosuch'; list the known ids with GET /v1/coins"),
    ({"coins": ["alpha"], "model": "prophet"}, ["body", "model"], "unknown model 'prophet'"),
    ({"coins": ["alpha"], "horizon": 400}, ["body", "horizon"], "at most 365"),
    ({"coins": ["alpha"], "horizon": 0}, ["body", "horizon"], "greater than or equal to 1"),
    ({"series": {"s": [1.0, 2.0]}, "model": "lstm"}, ["body", "series", "s"],
     "model 'lstm' needs at least 51"),
    ({"coins": ["alpha"], "model": "lstm", "params": {"depth": 3}}, ["body", "params"],
     "takes depth"),
    ({"coins": ["alpha"], "model": "lstm", "params": {"epochs": 0}}, ["body", "params"],
     "epochs must be an integer"),
    ({"coins": ["alpha"], "series": {"s": [1.0]}}, ["body"], "exactly one of 'coins'"),
    ({"model": "linear"}, ["body"], "exactly one of 'coins'"),
    ({"series": {"s": [1.0, "x"]}}, ["body", "series", "s", 1], "valid number"),
    # as send-tasks --max-points and POST /v1/jobs refuse it (it answered 200)
    ({"coins": ["alpha"], "max_points": 2}, ["body", "max_points"], "2 is too few: naive fits "
     "and calibrates its prediction intervals on at least 20 closes; give 20 or more, or 0"),
])
def test_invalid_bodies_get_422_naming_field_and_problem(data: Path, body: dict[str, Any],
                                                          loc: list[Any], words: str) -> None:
    reply = make(data).post("/v1/forecasts", json=body)
    assert reply.status_code == 422, reply.text
    details = reply.json()["detail"]
    assert any(d["loc"] == loc and words in d["msg"] for d in details), details


def test_nan_in_a_series_is_named_by_position(data: Path) -> None:
    reply = make(data).post("/v1/forecasts", content=b'{"series": {"s": [1, 2, NaN, 4]}}',
                            headers={"content-type": "application/json"})
    assert reply.status_code == 422
    assert reply.json()["detail"] == [{"loc": ["body", "series", "s", 2], "type": "value_error",
                                       "msg": "item 2 is nan; send only finite closes "
                                              "(drop NaNs first)"}]


@pytest.mark.parametrize("level", [b"NaN", b"Infinity"])
def test_a_level_that_is_no_number_is_named_so(data: Path, level: bytes) -> None:
    # not "less than 100", which a NaN is not either
    reply = make(data).post("/v1/forecasts", content=b'{"coins": ["alpha"], "levels": [80, '
                            + level + b"]}", headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    [detail] = reply.json()["detail"]
    assert detail["loc"] == ["body", "levels", 1] and detail["msg"] == "Input should be a finite number"


HOSTILE = [
    ("application/json", b'{"coins": ["alpha"], "horizon": NaN}'),
    ("application/json", b'{"coins": [Infinity]}'),
    ("application/json", b'{"coins": ["alpha"], "levels": [-Infinity]}'),
    ("application/json", b'{"coins": ["alpha"], "model": NaN, "retrain": NaN}'),
    ("application/json", b'{"coins": ["alpha"], "max_points": NaN}'),
    ("application/json", b'{"series": {"s": NaN}}'),
    ("application/json", b'{"coins": ["alpha"], "unknown": NaN}'),
    ("application/json", b'{"coins": ["alpha"], "model": "lstm", "params": {"seed": '
                         + b"1" + b"0" * 30 + b"}}"),
    ("application/json", b'{"coins": ["alpha"], "model": "lstm", "params": {"epochs": NaN}}'),
    ("application/json", b"\xff\xfe{not utf-8"),
    ("application/msgpack", b"\x81\xa5coins\x91\xa5alpha\xff"),
    ("application/octet-stream", b"\xff\xfe\x00"),
    ("text/plain", b"\xc3\x28"),
    (None, b"\xff"),
    ("application/json", b'{"coins": null, "series": {"s": [1.0, 2.0]}}'),
    ("application/json", b'{"coins'),
    ("application/json", b'{"coins": ["\\ud800"]}'),  # a lone surrogate: no UTF-8 text
    ("application/json", b'{"series": {"\\udc00": [1, 2, 3, 4, 5]}, "model": "naive"}'),
    ("application/json", b'{"coins": ["alpha"], "max_points": 1' + b"0" * 30 + b"}"),
    ("application/json", b'{"coins": ["alpha"], "levels": [80.5, 80.50000000000001]}'),
    ("application/json", b'{"coins": ["alpha"], "levels": [' + b", ".join(
        str(10 + i).encode() for i in range(21)) + b"]}"),
]


@pytest.mark.parametrize(("content_type", "raw"), HOSTILE)
def test_hostile_bodies_get_a_422_that_is_strict_json(data: Path, content_type: str | None,
                                                      raw: bytes) -> None:
    headers = {"content-type": content_type} if content_type else {}
    reply = make(data).post("/v1/forecasts", content=raw, headers=headers)
    assert reply.status_code == 422, reply.text
    body = json.loads(reply.text, parse_constant=lambda c: pytest.fail(f"{c} in {reply.text}"))
    assert body["detail"] and all({"loc", "msg", "type"} <= set(d) for d in body["detail"])


def test_a_number_too_long_to_read_is_named_as_such(data: Path) -> None:
    raw = b'{"coins": ["alpha"], "horizon": 1' + b"0" * 5000 + b"}"
    reply = make(data).post("/v1/forecasts", content=raw,
                            headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert "more than 4300 digits" in reply.json()["detail"][0]["msg"], reply.text


def test_error_bodies_are_bounded_whatever_the_input(data: Path) -> None:
    api = make(data)
    many = api.post("/v1/forecasts", json={"coins": [f"nosuch{i}" for i in range(100_000)]})
    assert many.status_code == 422 and len(many.content) < 10_000
    assert many.json()["detail"][-1]["type"] == "too_many_errors"
    wide = api.post("/v1/forecasts", content=json.dumps({f"k{i}": "x" * 1000 for i in range(200)}),
                    headers={"content-type": "application/json"})
    assert wide.status_code == 422 and len(wide.content) < 10_000
    assert "the body has 200 fields; this one takes at most 8" in wide.json()["detail"][0]["msg"]
    bad = {"coins": ["alpha"], "horizon": 0, "model": 5, "levels": "x", "retrain": "no"}
    assert len(api.post("/v1/forecasts", json=bad).json()["detail"]) >= 4  # each field's own


def test_a_json_body_is_read_as_json_whatever_its_content_type(data: Path) -> None:
    # curl -d sends a form's content type: FastAPI handed the body to the model as text
    body = json.dumps({"coins": ["alpha"], "model": "naive", "horizon": 2})
    api = make(data)
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None,
                         "multipart/form-data; boundary=x"):
        headers = {"content-type": content_type} if content_type else {}
        reply = api.post("/v1/forecasts", content=body, headers=headers)
        assert reply.status_code == 200, (content_type, reply.text)
        assert reply.json()["results"]["alpha"]["naive"]["forecast"]
    job = api.post("/v1/jobs", content=json.dumps({"input": "x.parquet"}),
                   headers={"content-type": "text/plain"})
    assert job.status_code == 503, job.text  # read as JSON (else a 422): then no cluster here


def test_too_many_series_or_too_deep_a_body_get_a_422_naming_it(data: Path) -> None:
    api = make(data)
    many = api.post("/v1/forecasts", json={"series": {f"s{i}": [1.0, 2.0] for i in range(1001)}})
    assert many.status_code == 422 and many.json()["detail"][0]["type"] == "too_long"
    deep = api.post("/v1/forecasts", content=b"[" * 100_000 + b"]" * 100_000,
                    headers={"content-type": "application/json"})
    assert deep.status_code == 422 and "nests" in deep.json()["detail"][0]["msg"], deep.text


def test_a_503_never_names_where_the_server_keeps_its_data(tmp_path: Path) -> None:
    empty = tmp_path / "secret-place"
    empty.mkdir()
    reply = make(empty).get("/v1/coins")
    assert reply.status_code == 503, reply.text
    assert "secret-place" not in reply.text and "data directory" in reply.text


def test_openapi_documents_what_each_route_answers(data: Path) -> None:
    spec = make(data, api_keys=("k",)).get("/openapi.json").json()
    for path in ("/v1/forecasts", "/v1/forecasts/{run_id}", "/v1/jobs", "/v1/jobs/{job_id}",
                 "/v1/coins", "/v1/models"):
        for operation in spec["paths"][path].values():
            assert "401" in operation["responses"], path
            assert all("content" in r for r in operation["responses"].values()), path  # a model
    body = spec["components"]["schemas"]["ForecastBody"]
    assert body["oneOf"] == [{"required": ["coins"]}, {"required": ["series"]}]
    assert body["properties"]["series"]["maxProperties"] == 1000
    job = spec["components"]["schemas"]["JobBody"]["properties"]["horizon"]
    assert job["maximum"] == Settings().max_horizon
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    # an id in the path is any string: those routes cannot answer 422 and do not list it
    assert "422" not in spec["paths"]["/v1/forecasts/{run_id}"]["get"]["responses"]
    assert "422" not in spec["paths"]["/v1/jobs/{job_id}/output"]["head"]["responses"]
    assert "422" in spec["paths"]["/v1/forecasts"]["post"]["responses"]
    used = set(re.findall(r"#/components/schemas/(\w+)", json.dumps(spec)))
    assert set(spec["components"]["schemas"]) <= used  # no schema that nothing answers with


def test_a_server_without_keys_documents_no_key_and_no_401(data: Path) -> None:
    spec = make(data).get("/openapi.json").json()
    assert "securitySchemes" not in spec["components"]
    for methods in spec["paths"].values():
        for operation in methods.values():
            assert "security" not in operation and "401" not in operation["responses"]


def test_a_method_a_route_lacks_gets_405_naming_the_ones_it_has(data: Path) -> None:
    reply = make(data).options("/v1/jobs/x")
    assert reply.status_code == 405
    assert set(reply.headers["allow"].replace(" ", "").split(",")) == {"GET", "DELETE", "HEAD"}


@pytest.mark.parametrize("wait", ["6", "5_0", "0x1", "nan", "inf"])
def test_wait_above_the_cap_or_not_in_decimal_is_refused(data: Path, wait: str) -> None:
    reply = make(data, api_max_wait=5).post(f"/v1/forecasts?wait={wait}",
                                            json={"coins": ["alpha"]})
    assert reply.status_code == 422  # 5_0 was read as 50, as Python reads it
    assert reply.json()["detail"][0]["loc"] == ["query", "wait"]


@pytest.mark.parametrize("wait", ["1", " 2.5", "1e0", ".5", "+3."])
def test_wait_in_decimal_is_taken(data: Path, wait: str) -> None:
    reply = make(data, api_max_wait=5).post(f"/v1/forecasts?wait={wait}",
                                            json={"coins": ["alpha"], "model": "naive"})
    assert reply.status_code == 200, reply.text


def test_unknown_run_is_404_and_a_finished_one_can_be_read_again(data: Path) -> None:
    api = make(data)
    assert api.get("/v1/forecasts/nosuchid").status_code == 404
    run = api.post("/v1/forecasts", json={"coins": ["beta"], "model": "naive"}).json()
    again = api.get(f"/v1/forecasts/{run['id']}")
    assert again.status_code == 200 and again.json() == run


def test_api_keys_are_required_when_configured(data: Path) -> None:
    api = make(data, api_keys=("k1-secret", "k2-secret"))
    body = {"coins": ["alpha"], "model": "naive"}
    assert api.post("/v1/forecasts", json=body).status_code == 401
    wrong = api.post("/v1/forecasts", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert api.get("/v1/coins").status_code == 401
    for key in ("k1-secret", "k2-secret"):
        ok = api.post("/v1/forecasts", json=body, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200, ok.text
    assert api.get("/healthz").status_code == 200  # probes and scrapers need no key
    assert api.get("/metrics").status_code == 200


@pytest.mark.parametrize("body", [b"xx", b"[" * 100_000, b"\xff\xfe", b"{}"])
@pytest.mark.parametrize("path", ["/v1/forecasts", "/v1/jobs", "/v1/forecasts?wait=5"])
def test_a_body_without_a_key_gets_401_before_it_is_read(data: Path, body: bytes,
                                                          path: str) -> None:
    # FastAPI parses a body before the route's key check: one that was no JSON got 422
    api = make(data, api_keys=("k1-secret",))
    for headers in ({}, {"Authorization": "Bearer nope"}):
        reply = api.post(path, content=body, headers=headers)
        assert reply.status_code == 401, reply.text
        assert reply.json() == {"detail": "missing or unknown API key; send Authorization: "
                                          "Bearer <key>"}
        assert reply.headers["www-authenticate"] == "Bearer"
    metrics = api.get("/metrics").text
    assert f'route="{path.split("?")[0]}",status="401"' in metrics


def test_head_answers_as_get_does_without_the_body(data: Path) -> None:
    api = make(data, api_keys=("k1-secret",))
    key = {"Authorization": "Bearer k1-secret"}
    for path, headers in (("/healthz", {}), ("/v1/coins", key), ("/v1/models", key),
                          ("/metrics", {})):
        got, head = api.get(path, headers=headers), api.head(path, headers=headers)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == got.headers["content-type"], path
    assert api.head("/v1/coins").status_code == 401  # the same keys
    assert api.head("/v1/forecasts/" + "0" * 32, headers=key).status_code == 404
    assert api.head("/v1/forecasts", headers=key).status_code == 405  # POST only


def test_bodies_above_the_cap_get_413(data: Path) -> None:
    api = make(data, api_max_body=1000)
    big = {"series": {"s": [1.0] * 500}}
    assert api.post("/v1/forecasts", json=big).status_code == 413
    chunked = api.post("/v1/forecasts", content=iter([b'{"series": {"s": [', b"1.0," * 400,
                                                      b"1.0]}}"]),
                       headers={"content-type": "application/json"})
    assert chunked.status_code == 413  # no Content-Length: counted as it arrives
    assert api.post("/v1/forecasts", json={"series": {"s": [1.0, 2.0]}}).status_code == 200


def test_one_close_with_intervals_is_refused_before_any_work(data: Path) -> None:
    # 200 with a failure naming the command line's --levels none
    api = make(data)
    reply = api.post("/v1/forecasts", json={"series": {"a": [1.0]}, "model": "naive"})
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"][0]["msg"] == ("'a' has 1 usable closes; model 'naive' needs at "
                                                "least 2 to size its prediction intervals "
                                                "(levels: [] for none)")
    bare = api.post("/v1/forecasts", json={"series": {"a": [1.0]}, "model": "naive",
                                           "levels": []})
    assert bare.status_code == 200 and bare.json()["failed"] == {}, bare.text


def test_coins_match_in_any_case_and_spacing_once_each_under_their_id(data: Path) -> None:
    # three forecasts came back, keyed "Alpha", "ALPHA" and " alpha"
    api = make(data)
    reply = api.post("/v1/forecasts", json={"coins": ["Alpha", "ALPHA", " alpha ", "beta"],
                                            "model": "naive", "horizon": 2})
    assert reply.status_code == 200, reply.text
    assert sorted(reply.json()["results"]) == ["alpha", "beta"]
    unknown = api.post("/v1/forecasts", json={"coins": ["alpha", "Nope", "nope"]})
    assert unknown.status_code == 422
    assert [p["loc"] for p in unknown.json()["detail"]] == [["body", "coins", 1]]


def test_coins_models_health_and_metrics(data: Path) -> None:
    api = make(data)
    assert api.get("/v1/coins").json() == {"coins": ["alpha", "beta"]}
    models = {m["name"]: m for m in api.get("/v1/models").json()["models"]}
    assert models["linear"] == {"name": "linear", "queue": "cpu", "params": [], "stored": False}
    assert models["lstm"]["queue"] == "gpu" and models["lstm"]["stored"]
    assert "epochs" in models["lstm"]["params"]
    assert api.get("/healthz").json()["status"] == "ok"
    api.post("/v1/forecasts", json={"coins": ["alpha"], "model": "naive"})
    api.post("/v1/forecasts", json={"coins": ["nosuch"], "model": "naive"})
    text = api.get("/metrics").text
    assert 'crypto_ml_api_requests_total{method="POST",route="/v1/forecasts",status="200"} 1.0' \
        in text
    assert 'crypto_ml_api_requests_total{method="POST",route="/v1/forecasts",status="422"} 1.0' \
        in text
    assert 'crypto_ml_api_request_seconds_count{method="POST",route="/v1/forecasts"} 2.0' in text
    assert 'crypto_ml_api_forecasts_total{model="naive",status="ok"} 1.0' in text
    assert "# TYPE crypto_ml_api_queue_depth gauge" in text


def test_openapi_lists_every_endpoint_and_docs_need_no_cdn(data: Path) -> None:
    api = make(data)
    paths = api.get("/openapi.json").json()["paths"]
    assert set(paths) == {"/v1/forecasts", "/v1/forecasts/{run_id}", "/v1/jobs",
                          "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/output",
                          "/v1/jobs/{job_id}/failures", "/v1/coins", "/v1/models", "/healthz",
                          "/metrics"}
    page = api.get("/docs").text
    assert "/docs-static/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert api.get("/docs-static/swagger-ui-bundle.js").status_code == 200


def test_every_route_but_the_scrape_runs_on_the_event_loop(data: Path) -> None:
    """FastAPI runs a plain function in its thread pool, a hop per request: only /metrics,
    whose collector reads the broker with a blocking client, may be one."""
    app = create_app(Settings(data_dir=data), InProcessRuns())

    def routes(within: list[Any]) -> list[APIRoute]:  # FastAPI wraps each included router
        return [found for route in within for found in (
            routes(route.original_router.routes) if hasattr(route, "original_router")
            else [route] if isinstance(route, APIRoute) else [])]

    found = routes(app.routes)
    assert {"/v1/forecasts", "/v1/jobs/{job_id}", "/metrics"} <= {r.path for r in found}
    assert sorted(r.path for r in found if not inspect.iscoroutinefunction(r.endpoint)) == [
        "/metrics"]


@pytest.mark.integration  # runs the command in a subprocess
def test_refuses_non_loopback_without_keys() -> None:
    check_exposure("127.0.0.1", Settings())
    check_exposure("0.0.0.0", Settings(api_keys=("k",)))
    with pytest.raises(ConfigError, match="without authentication"):
        check_exposure("0.0.0.0", Settings())
    env = {"PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "crypto_ml.api", "--host", "0.0.0.0"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "refusing to serve the API on 0.0.0.0 without authentication" in run.stderr


@pytest.mark.integration  # runs the command in a subprocess
@pytest.mark.parametrize("where", [["--in-process"], []])
def test_a_port_in_use_is_a_configuration_error(where: list[str], data: Path) -> None:
    # on the embedded cluster: the cluster started, the API said it served, then uvicorn's
    # error, then this line
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "crypto_ml.api", *where, "--port",
                              str(port)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={"PATH": "/usr/bin:/bin", "CRYPTO_ML_DATA_DIR": str(data)})
    assert run.returncode == 2, run.stderr
    assert run.stderr == (f"crypto-ml: error: could not listen on 127.0.0.1:{port} (the port "
                          "is in use, or the address is not one of this machine's)\n")
    assert run.stdout == ""  # the server's notices go to stderr, as the command line's do


def test_job_bodies_take_levels_as_forecast_bodies_do() -> None:
    from crypto_ml.api.schemas import ForecastBody, JobBody

    assert JobBody(input="t.parquet", levels=[95, 80, 80]).levels == [80.0, 95.0]
    assert ForecastBody(coins=["a"], levels=[95, 80, 80]).levels == [80.0, 95.0]


@pytest.mark.parametrize("raw", [
    b'{"input": "\\ud800.parquet"}', b'{"input": "t.parquet", "id_col": "\\udc00"}',
    b'{"input": "t.parquet", "max_points": 1' + b"0" * 30 + b"}",
    b'{"input": "t.parquet", "levels": [80.5, 80.50000000000001]}'])
def test_hostile_job_bodies_get_a_422_that_is_strict_json(data: Path, raw: bytes) -> None:
    reply = make(data).post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert json.loads(reply.content.decode("utf-8"))["detail"]  # strict UTF-8 JSON


def test_a_folder_input_may_not_lead_outside_the_data_directory(tmp_path: Path) -> None:
    from crypto_ml.api.inputs import local_input
    from crypto_ml.core.errors import ConfigError

    root, outside = tmp_path / "data", tmp_path / "secret.parquet"
    (root / "folder").mkdir(parents=True)
    outside.write_bytes(b"PAR1")
    (root / "folder" / "a.parquet").write_bytes(b"PAR1")
    assert local_input("folder", root) == (root / "folder").resolve()
    (root / "folder" / "x.parquet").symlink_to(outside)
    with pytest.raises(ConfigError, match=r"'x\.parquet', which leads outside"):
        local_input("folder", root)


@pytest.mark.parametrize(("port", "says"),
                         [("70000", "must be a TCP port, 1 to 65535, got 70000"),
                          ("0", "must be a TCP port, 1 to 65535, got 0")])
def test_a_port_out_of_range_is_a_usage_error_not_a_server_that_never_listens(
        port: str, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    from crypto_ml.api.__main__ import main

    with pytest.raises(SystemExit) as done:
        main(["--port", port, "--in-process"])
    assert done.value.code == 2
    assert f"argument --port: {says}" in capsys.readouterr().err
