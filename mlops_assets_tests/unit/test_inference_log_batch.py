"""A batch of rows (one `POST /invocations`) enters the inference log whole or not at all."""

import pytest

from mlops_assets.serving.inference_log import InferenceLog, InferenceLogError


def test_a_batch_beyond_the_pending_limit_is_refused_whole(tmp_path):
    log = InferenceLog(tmp_path / "log", max_pending=5, start=False)
    log.record_many([{"request_id": f"a{i}"} for i in range(3)])
    with pytest.raises(InferenceLogError, match="holds 3 unwritten rows and cannot take 3 more"):
        log.record_many([{"request_id": f"b{i}"} for i in range(3)])
    assert log.stats().pending == 3
    log.record_many([{"request_id": f"c{i}"} for i in range(2)])
    assert log.stats().pending == 5 and log.stats().recorded == 5
