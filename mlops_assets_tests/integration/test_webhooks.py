"""Registry webhooks: signatures verified, replays and forgeries refused, a real server's feed."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import dagster as dg
import pytest

from mlops_assets.defs.deploy import new_model_versions
from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.models.webhooks import (
    DELIVERY_HEADER,
    PATH,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Inbox,
    WebhookError,
    make_server,
    sign,
    verify,
)
from mlops_assets.settings import load_settings

SECRET = "s3cret-for-tests"


def delivery(body: dict, secret: str = SECRET, at: float | None = None, delivery_id="d-1"):
    text = json.dumps(body)
    stamp = str(int(at if at is not None else time.time()))
    headers = {
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: stamp,
        SIGNATURE_HEADER: sign(secret, delivery_id, stamp, text),
    }
    return headers, text.encode()


def test_verify_accepts_signed_deliveries_and_names_what_is_wrong_with_others():
    body = {"entity": "model_version", "action": "created", "data": {"name": "m", "version": "3"}}
    headers, raw = delivery(body)
    assert verify(SECRET, headers, raw) == body
    forged_headers, _ = delivery(body, secret="guess")
    with pytest.raises(WebhookError, match="does not match"):
        verify(SECRET, forged_headers, raw)
    with pytest.raises(WebhookError, match="does not match"):
        verify(SECRET, headers, raw.replace(b'"3"', b'"4"'))
    stale, stale_raw = delivery(body, at=time.time() - 3600)
    with pytest.raises(WebhookError, match="more than 300 s"):
        verify(SECRET, stale, stale_raw)
    with pytest.raises(WebhookError, match="lacks header"):
        verify(SECRET, {k: v for k, v in headers.items() if k != SIGNATURE_HEADER}, raw)
    text_headers, text = delivery([1, 2])  # type: ignore[arg-type]
    with pytest.raises(WebhookError, match="not a JSON object") as error:
        verify(SECRET, text_headers, text)
    assert error.value.status == 400


def post(url: str, headers: dict, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_receiver_stores_each_verified_delivery_once(tmp_path):
    inbox = Inbox(tmp_path / "inbox.sqlite")
    server = make_server(inbox, SECRET)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}{PATH}"
    try:
        body = {"entity": "model_version", "action": "created", "data": {"name": "m", "version": 2}}
        headers, raw = delivery(body)
        assert post(url, headers, raw) == (200, {"stored": True})
        # A retry (same delivery id) is acknowledged but stored once.
        assert post(url, headers, raw) == (200, {"stored": False})
        forged, _ = delivery(body, secret="guess", delivery_id="d-2")
        status, answer = post(url, forged, raw)
        assert status == 401 and "does not match" in answer["error"]
        assert post(url.replace(PATH, "/other"), headers, raw)[0] == 404
        [stored] = inbox.since(0)
        assert (stored.model, stored.version, stored.action) == ("m", "2", "created")
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_an_mlflow_server_feeds_the_cd_sensor_through_signed_webhooks(tmp_path):
    import mlflow
    from cryptography.fernet import Fernet

    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path / "data"), "MLOPS_ENV": "dev"})
    inbox = Inbox(settings.webhook_inbox_path)
    receiver = make_server(inbox, SECRET)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'registry.db'}",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "mlflow server did not come up"
                time.sleep(1)
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_webhook(
            name="dev-cd",
            url=f"http://127.0.0.1:{receiver.server_address[1]}{PATH}",
            events=["model_version.created"],
            secret=SECRET,
        )
        client.create_registered_model("dev.fraud_detector")
        experiment = client.create_experiment("cd")
        run = client.create_run(experiment)
        client.set_terminated(run.info.run_id)
        version = client.create_model_version(
            "dev.fraud_detector", f"{run.info.artifact_uri}/model", run_id=run.info.run_id
        ).version
        deadline = time.monotonic() + 60
        while not inbox.since(0):
            assert time.monotonic() < deadline, "no webhook delivery arrived"
            time.sleep(0.5)
        [stored] = inbox.since(0)
        assert (stored.model, stored.version) == ("dev.fraud_detector", str(version))
        # The sensor reads the verified delivery and requests the version's CD run once.
        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            context = dg.build_sensor_context(
                resources={"lakehouse": LakehouseResource.from_settings(settings)}
            )
            result = new_model_versions(context)
            [request] = result.run_requests
            assert request.tags["mlops/trigger"] == "webhook"
            assert request.run_key == f"dev.fraud_detector/{version}"
            cursor = json.loads(result.cursor)
            assert cursor == {"version": int(version), "inbox": stored.seq}
            again = new_model_versions(
                dg.build_sensor_context(
                    cursor=result.cursor,
                    resources={"lakehouse": LakehouseResource.from_settings(settings)},
                )
            )
            assert not again.run_requests
        finally:
            del os.environ["MLFLOW_TRACKING_URI"]
    finally:
        receiver.shutdown()
        receiver.server_close()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
