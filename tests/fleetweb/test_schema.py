"""OpenAPI at /api/schema/ (valid, no warnings) and Swagger UI at /api/docs/ (local assets only)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

DOCUMENTED_PATHS = [
    "/api/v1/agents/register", "/api/v1/hosts/", "/api/v1/hosts/{id}/", "/api/v1/groups/", "/api/v1/groups/{id}/",
    "/api/v1/channels/", "/api/v1/channels/{name}/", "/api/v1/tokens/", "/api/v1/tokens/{id}/",
    "/api/v1/tokens/{id}/revoke", "/api/v1/events/", "/api/v1/events/{id}/",
]


def test_it_generates_a_valid_schema_without_warnings(tmp_path):
    out = tmp_path / "schema.yml"
    proc = subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    schema = yaml.safe_load(out.read_text())
    for path in DOCUMENTED_PATHS:
        assert path in schema["paths"], path
    assert schema["paths"]["/api/v1/agents/register"]["post"].get("security", []) in ([], [{}])
    assert {"apiKey": []} in schema["paths"]["/api/v1/hosts/"]["get"]["security"]
    assert "apiKey" in schema["components"]["securitySchemes"]


@pytest.mark.django_db
def test_it_serves_the_schema(client):
    r = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert r.status_code == 200
    assert "/api/v1/hosts/" in r.json()["paths"]


@pytest.mark.django_db
def test_it_serves_swagger_ui_from_local_static_files(client):
    r = client.get("/api/docs/")
    assert r.status_code == 200
    html = r.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    assert any(a.endswith("swagger-ui.css") for a in assets)
    for asset in assets:
        assert asset.startswith("/static/"), asset
    assert not re.search(r"https?://(?!127\.0\.0\.1|localhost)", html.replace("http://www.w3.org", "")), \
        "the docs page must not load anything from another site"
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert b"".join(served.streaming_content if served.streaming else [served.content])


@pytest.mark.django_db
def test_every_operation_documents_the_errors_it_answers_with(client, alice, bob, web_group):
    """The schema fuzzer (test_fuzz_api.py) got answers the schema did not document: 401, 403, 404, 400."""
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    error = {"$ref": "#/components/schemas/Error"}

    def documented(path, method, code):
        return schema["paths"][path][method]["responses"][code]["content"]["application/json"]["schema"]

    assert client.get("/api/v1/hosts/").status_code == 401
    assert documented("/api/v1/hosts/", "get", "401") == error
    assert bob.post("/api/v1/groups/", {"name": "x", "channel": "stable"}, format="json").status_code == 403
    assert documented("/api/v1/groups/", "post", "403") == error
    assert alice.get("/api/v1/groups/999999/").status_code == 404
    assert documented("/api/v1/groups/{id}/", "get", "404") == error
    assert alice.get("/api/v1/hosts/?page=99").status_code == 404
    assert documented("/api/v1/hosts/", "get", "404") == error
    assert alice.patch(f"/api/v1/groups/{web_group.pk}/", {"max_concurrent_reboots": 0}, format="json").status_code == 400
    assert documented("/api/v1/groups/{id}/", "patch", "400") == error
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {"detail", "errors"}
    # what an operation documents itself stays
    register = schema["paths"]["/api/v1/agents/register"]["post"]["responses"]
    assert "token_invalid" in register["401"]["description"] and "429" not in register


@pytest.mark.django_db
def test_every_path_parameter_is_in_its_path(client):
    """The schema fuzzer: GET /api/v1/locks/ documented a required path parameter group_id it has no place for."""
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    for path, item in schema["paths"].items():
        in_path = set(re.findall(r"{(\w+)}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == in_path, f"{method.upper()} {path}: {declared} declared"
