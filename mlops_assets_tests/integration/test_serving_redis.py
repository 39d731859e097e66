"""Serving from Redis: the session's lake published to a real Redis, scored by `build_service`.

The online tables go to Redis through the `online_publish` job (the assets choose the store
from the settings), then the scoring service of the same environment, pointed at Redis, must
answer every request exactly as the one reading the embedded SQLite store does.
"""

import dataclasses
import json
import time

import polars as pl
import pytest
import redis

from mlops_assets.definitions import build_definitions
from mlops_assets.features.online_store import OnlineStore
from mlops_assets.features.redis_store import RedisOnlineStore
from mlops_assets.serving.app import ScoringService, build_service
from mlops_assets.stack.process import free_port
from mlops_assets_tests.serving_env import ServingEnv

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@pytest.fixture(scope="module")
def redis_lake(cd_lake, champion, redis_url):
    """The session lake's settings pointed at Redis (its own database), tables published."""
    import dagster as dg

    settings, _, _ = cd_lake
    url = redis_url.rsplit("/", 1)[0] + "/3"
    on_redis = dataclasses.replace(settings, online_store_url=url)
    # The lakehouse resource takes the online store from the process's settings, as a code
    # server started with MLOPS_ONLINE_STORE does.
    with pytest.MonkeyPatch.context() as patch, dg.DagsterInstance.ephemeral() as instance:
        patch.setenv("MLOPS_ONLINE_STORE", url)
        result = (
            build_definitions(on_redis)
            .resolve_job_def("online_publish")
            .execute_in_process(instance=instance, run_config=QUIET)
        )
    assert result.success
    yield settings, on_redis
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def score_all(service: ScoringService, requests: list[dict]) -> list:
    answers = []
    for i, request in enumerate(requests):
        answer = service.score(
            json.dumps(request).encode(), request_id=f"r-{i}", started=time.perf_counter()
        )
        answers.append(answer)
    return answers


def stop(service: ScoringService) -> None:
    service.holder.stop()
    service.inference_log.close()
    service.store.close()


def test_the_publish_job_fills_redis_like_the_embedded_store(redis_lake):
    settings, on_redis = redis_lake
    sqlite = OnlineStore(settings.online_store_path)
    shared = RedisOnlineStore(on_redis.online_store_url, prefix="mlops:dev:online")
    try:
        assert shared.tables() == sqlite.tables() == ["card_behaviour", "merchant_risk"]
        for table in sqlite.tables():
            here, there = sqlite.describe(table), shared.describe(table)
            for field in ("features", "types", "defaults", "rows", "latest_feature_time", "key"):
                assert here[field] == there[field], (table, field)
            assert there["path"] == on_redis.online_store_url
        silver = pl.read_delta(str(settings.lake_root / "silver" / "transactions"))
        cards = [*silver.get_column("card_id").unique().sort().head(200), "no-such-card"]
        merchants = silver.get_column("merchant_id").unique().sort().head(100).to_list()
        assert shared.lookup_many("card_behaviour", cards) == sqlite.lookup_many(
            "card_behaviour", cards
        )
        assert shared.lookup_many("merchant_risk", merchants) == sqlite.lookup_many(
            "merchant_risk", merchants
        )
    finally:
        sqlite.close()
        shared.close()


def test_the_scoring_service_answers_from_redis_as_from_sqlite(redis_lake):
    settings, on_redis = redis_lake
    requests = ServingEnv(settings=settings, training_set=pl.DataFrame(), versions=[]).requests(
        150, seed=4
    )
    options = {"poll_seconds": 0.2, "flush_interval_ms": 100, "wait_for_model": 120}

    service = build_service(on_redis, **options)
    try:
        assert service.holder.current is not None
        assert isinstance(service.store, RedisOnlineStore)
        where = {"backend": "redis", "location": on_redis.online_store_url}
        health, ready = service.health(), service.ready()
        assert health.body["online_store"] == where
        assert (ready.status, ready.body["online_store"]) == (200, where)
        from_redis = score_all(service, requests)
        counts = service.store.stats()
    finally:
        stop(service)
    assert [a.status for a in from_redis] == [200] * len(requests)
    assert counts["card_behaviour"]["lookups"] == len(requests)
    assert counts["card_behaviour"]["hits"] == len(requests)
    assert counts["merchant_risk"]["lookups"] == len(requests)

    service = build_service(settings, **options)
    try:
        assert service.health().body["online_store"] == {
            "backend": "sqlite",
            "location": str(settings.online_store_path),
        }
        from_sqlite = score_all(service, requests)
    finally:
        stop(service)
    assert [a.body["score"] for a in from_redis] == [a.body["score"] for a in from_sqlite]
    assert [a.body["model"] for a in from_redis] == [a.body["model"] for a in from_sqlite]


def test_readiness_names_an_unreachable_redis(redis_lake):
    _, on_redis = redis_lake
    service = build_service(on_redis, poll_seconds=0.2, wait_for_model=120)
    url = f"redis://127.0.0.1:{free_port()}/0"
    down = ScoringService(service.holder, RedisOnlineStore(url), service.inference_log)
    try:
        ready = down.ready()
        assert ready.status == 503
        assert ready.body["online_store"] == {"backend": "redis", "location": url}
        (reason,) = ready.body["reasons"]
        assert reason.startswith(f"online store unavailable: online store {url} is unreachable")
        with pytest.raises(ConnectionError, match=url):
            down.store.lookup("card_behaviour", "c-1")
    finally:
        stop(service)
        down.store.close()
