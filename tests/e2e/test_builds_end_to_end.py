"""Image builds end to end: the real ASGI server, Redis, a real Celery worker running imagebuilder;
driven through the REST API like a user of `make run` would."""
from __future__ import annotations

import hashlib
import json
import subprocess

from .conftest import wait_for


def test_a_build_runs_on_the_worker_downloads_as_qcow2_and_publishes_to_alpha(stack, tmp_path):
    stack.start_worker()
    r = stack.api.post("/api/v1/builds/", json={"version": "7.1.0", "channel": "alpha",
                                                "platforms": ["qemu", "gce"]})
    assert r.status_code == 202, r.text
    build_id = r.json()["id"]
    assert r.json()["status"] == "queued"

    def finished():
        item = stack.api.get(f"/api/v1/builds/{build_id}/").json()
        return item if item["status"] in ("succeeded", "failed", "cancelled") else None

    wait_for(finished, timeout=600, interval=0.5, what="the build to finish")
    build = finished()
    assert build["status"] == "succeeded", build["last_error"]
    assert build["progress"] == 100
    assert set(build["timings"]) == {"prepare", "gce", "qemu", "sums"}

    [qcow2] = [a for a in build["artifacts"] if a["name"].endswith("qemu_image.qcow2")]
    out = tmp_path / "disk.qcow2"
    digest = hashlib.sha256()
    with stack.api.stream("GET", qcow2["url"]) as resp:
        assert resp.status_code == 200
        with open(out, "wb") as f:
            for chunk in resp.iter_bytes():
                digest.update(chunk)
                f.write(chunk)
    assert digest.hexdigest() == qcow2["sha256"] and out.stat().st_size == qcow2["size"]
    info = json.loads(subprocess.run(["qemu-img", "info", "--output", "json", str(out)], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["format"] == "qcow2"

    log = stack.api.get(f"/api/v1/builds/{build_id}/log")
    assert log.status_code == 200 and "qemu:" in log.text and "succeeded" in log.text

    r = stack.api.post(f"/api/v1/builds/{build_id}/publish", json={"channel": "alpha"})
    assert r.status_code == 200, r.text
    alpha = stack.api.get("/api/v1/channels/alpha/").json()
    assert alpha["current_release"]["version"] == "7.1.0"
    assert alpha["current_release"]["id"] == r.json()["release"]
    assert stack.api.get(f"/api/v1/builds/{build_id}/").json()["release_version"] == "7.1.0"
