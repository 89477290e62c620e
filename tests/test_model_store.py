"""The model store without a cluster: keys, the .npz entry format (never pickle), the
directory store and its expiry, restore gives the same forecast, and a broken store
only costs a fit. The Redis store with real workers is in tests/test_api_cluster.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli
from redis.sentinel import SentinelConnectionPool

from crypto_ml.core.errors import ConfigError, InvalidTaskInput
from crypto_ml.core.settings import Settings
from crypto_ml.models import get_model
from crypto_ml.models.state import ModelStateError
from crypto_ml.ops.processes import free_port
from crypto_ml.worker.app import create_app
from crypto_ml.worker.model_store import (
    DirectoryModelStore,
    RedisModelStore,
    StoreUnavailable,
    export_state,
    forecast_with_store,
    open_store,
    restore_state,
    store_key,
)
from crypto_ml.worker.requests import ForecastRequest, run_forecast

SERIES = list(100.0 + np.cumsum(np.random.default_rng(3).normal(0, 1, 40)) + np.arange(40))
PARAMS: dict[str, Any] = {"epochs": 1, "window": 8}


def test_key_changes_with_series_model_options_and_data_not_horizon() -> None:
    key = store_key("a", "lstm", PARAMS, SERIES)
    assert key == store_key("a", "lstm", dict(reversed(PARAMS.items())), list(SERIES))
    assert len(key) == 64
    assert key != store_key("b", "lstm", PARAMS, SERIES)
    assert key != store_key("a", "gru", PARAMS, SERIES)
    assert key != store_key("a", "lstm", {**PARAMS, "epochs": 2}, SERIES)
    assert key != store_key("a", "lstm", PARAMS, [*SERIES, 150.0])  # a new day: train again


def test_open_store_specs(tmp_path: Path) -> None:
    assert open_store("off", None) is None
    assert open_store(None, None) is None  # default (the backend's Redis) without a backend
    assert isinstance(open_store(None, object()), RedisModelStore)  # type: ignore[arg-type]
    assert isinstance(open_store("redis://127.0.0.1:1/0", None), RedisModelStore)
    # the master the sentinels name, as for the broker (a real one: test_reliability_sentinel)
    by_sentinel = open_store("sentinel://127.0.0.1:1;sentinel://127.0.0.1:2/3", None,
                             sentinel_master="models")
    assert isinstance(by_sentinel, RedisModelStore)
    pool = by_sentinel.client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "models"
    store = open_store(f"file://{tmp_path}", None)
    assert isinstance(store, DirectoryModelStore) and store.root == tmp_path
    assert isinstance(open_store(str(tmp_path), None), DirectoryModelStore)
    with pytest.raises(ConfigError, match="name a bucket"):
        open_store("s3:///models", None)
    with pytest.raises(ConfigError, match="ftp"):
        open_store("ftp://host/x", None)


def test_directory_store_round_trip_and_expiry(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path / "models", ttl=60)
    assert store.get("k") is None
    store.put("k", b"blob")
    assert store.get("k") == b"blob"
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["k.npz"]  # no temp files left
    old = time.time() - 120
    os.utime(tmp_path / "models" / "k.npz", (old, old))
    assert store.get("k") is None


@pytest.mark.parametrize(("name", "params"), [("linear", {}),
                                              ("gru_ret", {"epochs": 2, "window": 5,
                                                           "members": 2, "units": 4})])
def test_restored_model_forecasts_exactly_as_the_fitted_one(name: str,
                                                            params: dict[str, Any]) -> None:
    """An entry round-trips any model's state (header values only, or an ensemble's arrays)."""
    fitted = get_model(name, **params).fit(SERIES)
    expected = fitted.forecast(5)
    blob = export_state(fitted)
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:  # plain arrays only
        assert all(archive[f].dtype != object for f in archive.files)
    get_model(name, **params).fit([x * 2 for x in SERIES])  # the shared network moves on
    restored = get_model(name, **params)
    restore_state(restored, blob, SERIES)
    np.testing.assert_array_equal(restored.forecast(5), expected)
    assert restored.n_points_ == len(SERIES)
    with pytest.raises(ModelStateError, match=f"state of model '{name}'"):
        restore_state(get_model("naive" if name == "linear" else "lstm_ret", **params), blob,
                      SERIES)


def _rewrite(entry: Path, **arrays: np.ndarray) -> None:
    """Replace some arrays of a directory store's entry."""
    with np.load(entry, allow_pickle=False) as archive:
        kept = {name: archive[name] for name in archive.files}
    np.savez(entry, **{**kept, **arrays})


class Broken:
    def get(self, key: str) -> bytes | None:
        raise OSError("disk gone")

    def put(self, key: str, blob: bytes) -> None:
        raise OSError("disk gone")


class Denied(DirectoryModelStore):
    def __init__(self) -> None:
        super().__init__(Path("/store"))

    def get(self, key: str) -> bytes | None:
        return None

    def put(self, key: str, blob: bytes) -> None:
        raise PermissionError(13, "Permission denied", f"/store/.tmp-{os.urandom(4).hex()}.npz")


def test_forecast_with_store_reuses_trains_and_survives_a_broken_store(tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path)
    args: dict[str, Any] = {"series": "a", "prices": SERIES}
    trained, fresh, unsaved = forecast_with_store(get_model("lstm", **PARAMS), store, horizon=4,
                                                  **args)
    assert fresh is False and set(trained.bands) == {"80", "95"}
    every = get_model("lstm", **PARAMS).option_values()  # the key names every option's value
    entry = tmp_path / f"{store_key('a', 'lstm', every, SERIES)}.npz"
    assert entry.exists()
    defaults = {k: v for k, v in PARAMS.items() if v != get_model("lstm").option_values()[k]}
    assert "epochs" not in defaults  # 1 is the default: given or not, the same fit
    assert forecast_with_store(get_model("lstm", **defaults), store, horizon=4, **args)[1]
    marked = trained.forecast + 1.0  # what the network would not give: proof of a read
    _rewrite(entry, forecast=marked)
    model = get_model("lstm", **PARAMS)
    stored, hit, _ = forecast_with_store(model, store, horizon=4, **args)  # the same request
    assert hit is True  # read from the entry, the network not run
    np.testing.assert_array_equal(stored.forecast, marked)
    assert stored.intervals_json() == trained.intervals_json()
    assert model.n_points_ == len(SERIES)
    _rewrite(entry, forecast=trained.forecast)
    longer, hit, _ = forecast_with_store(get_model("lstm", **PARAMS), store, horizon=6, **args)
    assert hit is True  # the restored network ran two more steps, no training
    np.testing.assert_array_equal(longer.forecast[:4], trained.forecast)
    again, hit, _ = forecast_with_store(get_model("lstm", **PARAMS), store, horizon=6, **args)
    assert hit is True and np.array_equal(again.forecast, longer.forecast)
    other, hit, _ = forecast_with_store(get_model("lstm", **PARAMS), store, horizon=6,
                                     levels=(50.0,), **args)
    assert hit is True and set(other.bands) == {"50"}  # other levels: intervals recomputed
    np.testing.assert_array_equal(other.forecast, longer.forecast)
    assert forecast_with_store(get_model("lstm", **PARAMS), store, horizon=2, retrain=True,
                               **args)[1] is False
    entry.write_bytes(b"not npz")
    assert forecast_with_store(get_model("lstm", **PARAMS), store, horizon=2, **args)[1] is False
    broken = forecast_with_store(get_model("lstm", **PARAMS), Broken(), horizon=2, **args)
    assert broken.from_store is False and broken.unsaved == "OSError: disk gone"
    # a folder it may not write in: every fit one reason, though each temporary file's
    # name differs (the summary says one line per reason)
    reasons = {forecast_with_store(get_model("lstm", **PARAMS), Denied(), horizon=2,
                                   **args).unsaved for _ in range(2)}
    assert reasons == {"PermissionError: Permission denied"}
    assert unsaved is None  # saved
    assert forecast_with_store(get_model("linear"), store, horizon=2, **args)[1] is None


def test_a_sentinel_store_with_no_sentinel_says_so_without_its_password() -> None:
    """redis-py's MasterNotFoundError printed the whole client into every result's
    ``unsaved`` and the run's summary (an outside probe)."""
    store = open_store(f"sentinel://:s3cret@127.0.0.1:{free_port()}", None)
    assert store is not None
    for attempt in (lambda: store.get("k"), lambda: store.put("k", b"v")):
        with pytest.raises(StoreUnavailable, match="no Sentinel of the sentinel:// store names "
                           "its master; check the URL") as refused:
            attempt()
        assert "s3cret" not in str(refused.value) and "<redis" not in str(refused.value)


def test_a_truncated_entry_or_another_series_entry_is_trained_over_not_served(
        tmp_path: Path) -> None:
    """A truncated file failed every forecast of its key (BadZipFile); an entry copied from
    another series of as many closes served that series' forecast."""
    store = DirectoryModelStore(tmp_path)
    every = get_model("lstm", **PARAMS).option_values()
    other = [2.0 * p for p in SERIES]
    for series, prices in (("a", SERIES), ("b", other)):
        forecast_with_store(get_model("lstm", **PARAMS), store, horizon=4, series=series,
                            prices=prices)
    entry_a, entry_b = (tmp_path / f"{store_key(s, 'lstm', every, p)}.npz"
                        for s, p in (("a", SERIES), ("b", other)))
    entry_b.write_bytes(entry_a.read_bytes())  # a's fit under b's key
    served, hit, _ = forecast_with_store(get_model("lstm", **PARAMS), store, horizon=4,
                                      series="b", prices=other)
    assert hit is False and served.forecast.mean() > 1.5 * np.mean(SERIES)  # b's own fit
    entry_a.write_bytes(entry_a.read_bytes()[:1000])
    assert forecast_with_store(get_model("lstm", **PARAMS), store, horizon=4, series="a",
                               prices=SERIES)[1] is False


@pytest.mark.integration  # runs a worker-side read in a subprocess
def test_a_stored_prediction_is_read_without_the_deep_learning_backend(tmp_path: Path) -> None:
    """Restoring an entry loads no network: a process that never imported TensorFlow answers."""
    args: dict[str, Any] = {"series": "a", "prices": [float(x) for x in SERIES], "horizon": 3}
    trained, _, _ = forecast_with_store(get_model("lstm", **PARAMS), DirectoryModelStore(tmp_path),
                                     **args)
    args["params"] = PARAMS
    code = ("import json, pathlib, sys\n"
            "from crypto_ml.models import get_model\n"
            "from crypto_ml.worker.model_store import DirectoryModelStore, forecast_with_store\n"
            "args = json.loads(sys.argv[2])\n"
            "store = DirectoryModelStore(pathlib.Path(sys.argv[1]))\n"
            "model = get_model('lstm', **args.pop('params'))\n"
            "p, hit, _ = forecast_with_store(model, store, **args)\n"
            "print(hit, p.forecast.tolist(), [m for m in ('tensorflow', 'keras') "
            "if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), json.dumps(args)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"True {trained.forecast.tolist()} []"


def test_requests_carry_the_store_flags_and_results_say_where_they_came_from(
        tmp_path: Path) -> None:
    store = DirectoryModelStore(tmp_path)
    request = ForecastRequest("a", "lstm", SERIES, 3, None, PARAMS)
    assert "retrain" not in request.as_kwargs() and "use_store" not in request.as_kwargs()
    assert run_forecast(request, "w", store)["from_store"] is False
    assert run_forecast(request, "w", store)["from_store"] is True
    assert run_forecast(replace(request, retrain=True), "w", store)["from_store"] is False
    # the store off: a deep model's forecast still says it was not read from one (the docs
    # promise the key on every deep model's result; a reader's r["from_store"] failed)
    assert run_forecast(replace(request, use_store=False), "w", store)["from_store"] is False
    assert run_forecast(request, "w", None)["from_store"] is False
    assert "from_store" not in run_forecast(replace(request, model="linear", params={}), "w",
                                            store)
    flagged = replace(request, retrain=True, use_store=False)
    assert ForecastRequest.parse(**flagged.as_kwargs()) == flagged
    with pytest.raises(InvalidTaskInput, match="'retrain': expected true or false"):
        ForecastRequest.parse(**{**request.as_kwargs(), "retrain": "yes"})


@pytest.mark.integration  # an embedded cluster, real training
def test_a_store_that_refuses_fits_is_named_in_the_summary(price_data: Path) -> None:
    # it was a warning in the workers' logs alone: every run trained again without a word
    run = run_cli("send-tasks", "--model", "lstm", "--epochs", "1", "--coins", "bitcoin",
                  "--workers", "1", data_dir=price_data,
                  env={"CRYPTO_ML_MODEL_STORE": "/dev/null/store"})  # under a device: no folder
    assert run.returncode == 0, run.stderr  # the forecast itself arrives
    assert run.stdout.startswith("bitcoin lstm [["), run.stdout
    line = next(x for x in run.stderr.splitlines() if "model store:" in x)
    assert "1 fit(s) not saved (NotADirectoryError" in line and "CRYPTO_ML_MODEL_STORE" in line



def test_a_store_url_is_masked_where_celery_lists_the_conf() -> None:
    """`celery inspect conf` and Flower's worker Config tab showed the store's URL, password
    and all (a review): the key is one Celery masks, as the Sentinels' password's is."""
    app = create_app(Settings(broker_url="redis://127.0.0.1:1/0", sentinel_password="pw2",
                              model_store="sentinel://:s3cret@127.0.0.1:1"))
    listed = str(app.conf.table(with_defaults=False))
    assert "s3cret" not in listed and "pw2" not in listed
    assert app.conf["crypto_ml_model_store_secret"] == "sentinel://:s3cret@127.0.0.1:1"
