"""An unrouted URL under /api/ answers 404 in the API's error shape, as the API's own 404s do (the
schema fuzzer got Django's HTML page for ids of the wrong type); other URLs keep Django's page."""
from __future__ import annotations


def test_an_unrouted_api_url_answers_in_the_error_shape(alice):
    for url in ("/api/v1/groups/1.5/", "/api/v1/hosts/not-a-uuid/cloud-config", "/api/v1/no-such-thing"):
        r = alice.get(url)
        assert r.status_code == 404, url
        assert r["Content-Type"] == "application/json", url
        assert r.json() == {"detail": "Not found.", "errors": {}, "code": "not_found"}, url
    assert alice.get("/api/v1/groups/999999/").json()["detail"] == "Not found."  # the API's own 404


def test_a_page_url_keeps_the_html_page(alice):
    r = alice.get("/no-such-page/")
    assert r.status_code == 404 and r["Content-Type"].startswith("text/html")
