"""Dashboard pages for cloud-config: editor, validate-as-you-type, revisions, diff, restore, panels."""
from __future__ import annotations

import pytest
from django.test import Client

from fleetweb.cloudconfig.models import CloudConfig, HostCloudConfigState, Revision

HTMX = {"HTTP_HX_REQUEST": "true"}
GOOD = "#cloud-config\nhostname: web\n"


def login(persona):
    client = Client()
    client.force_login(persona.user)
    return client


def test_the_editor_saves_a_revision_and_shows_it(alice, web_group):
    web = login(alice)
    r = web.post(f"/cloud-config/groups/{web_group.pk}/", {"content": GOOD})
    assert r.status_code == 302 and r["Location"].endswith("?saved=1")
    page = web.get(r["Location"]).content.decode()
    assert "Saved as r1" in page and 'hx-trigger="keyup changed delay:400ms, load"' in page
    assert 'data-revision="1"' in page and "Cloud-config" in page


def test_a_document_with_errors_is_shown_with_its_lines_and_not_saved(alice, web_group):
    r = login(alice).post(f"/cloud-config/groups/{web_group.pk}/",
                          {"content": "#cloud-config\ncoreos:\n  units:\n    - name: a\n      command: lol\n"})
    assert r.status_code == 422
    page = r.content.decode()
    assert "Not saved" in page and 'data-line="5" data-kind="error"' in page and "invalid value lol" in page
    assert Revision.objects.count() == 0


def test_validate_returns_the_report_fragment(bob):
    r = login(bob).post("/cloud-config/validate", {"content": "#cloud-config\nfoo: 1\n"}, **HTMX)
    assert r.status_code == 200
    page = r.content.decode()
    assert 'id="cc-report"' in page and 'data-line="2" data-kind="warning"' in page


def test_the_viewer_cannot_save_or_restore(bob, alice, web_group):
    login(alice).post(f"/cloud-config/groups/{web_group.pk}/", {"content": GOOD})
    login(alice).post(f"/cloud-config/groups/{web_group.pk}/", {"content": GOOD + "manage_etc_hosts: localhost\n"})
    viewer = login(bob)
    assert viewer.get(f"/cloud-config/groups/{web_group.pk}/").status_code == 200
    assert viewer.post(f"/cloud-config/groups/{web_group.pk}/", {"content": GOOD}).status_code == 403
    assert viewer.post(f"/cloud-config/groups/{web_group.pk}/revisions/1/restore").status_code == 403
    assert Revision.objects.count() == 2


def test_the_outsider_gets_404(charlie, web_group, make_host):
    host = make_host(web_group)
    web = login(charlie)
    for url in (f"/cloud-config/groups/{web_group.pk}/", f"/cloud-config/hosts/{host.pk}/",
                f"/cloud-config/groups/{web_group.pk}/hosts", f"/cloud-config/groups/{web_group.pk}/diff"):
        assert web.get(url).status_code == 404, url
    assert web.post(f"/cloud-config/groups/{web_group.pk}/", {"content": GOOD}).status_code == 404


def test_diff_and_restore(alice, web_group):
    web = login(alice)
    web.post(f"/cloud-config/groups/{web_group.pk}/", {"content": "#cloud-config\nhostname: a\n"})
    web.post(f"/cloud-config/groups/{web_group.pk}/", {"content": "#cloud-config\nhostname: b\n"})
    page = web.get(f"/cloud-config/groups/{web_group.pk}/diff?to=2").content.decode()
    assert '<div class="del">-hostname: a</div>' in page and '<div class="add">+hostname: b</div>' in page
    r = web.post(f"/cloud-config/groups/{web_group.pk}/revisions/1/restore")
    assert r.status_code == 302
    doc = CloudConfig.objects.get(group=web_group)
    assert doc.content == "#cloud-config\nhostname: a\n" and doc.revision_number == 3


def test_the_group_panel_shows_hosts_behind(alice, web_group, make_host):
    current, behind = make_host(web_group, hostname="current"), make_host(web_group, hostname="behind")
    web = login(alice)
    web.post(f"/cloud-config/groups/{web_group.pk}/", {"content": GOOD})
    HostCloudConfigState.objects.record_applied(current.pk, Revision.objects.get().pk, [])
    page = web.get(f"/cloud-config/groups/{web_group.pk}/hosts").content.decode()
    assert "1 behind of 2" in page
    assert f'data-host="{current.pk}" data-cc-state="current"' in page
    assert f'data-host="{behind.pk}" data-cc-state="behind"' in page
    assert "/cloud-config/groups/" in web.get(f"/groups/{web_group.pk}/").content.decode()


def test_the_host_page_shows_the_effective_document(alice, web_group, make_host):
    host = make_host(web_group)
    web = login(alice)
    web.post("/cloud-config/organization/", {"content": "#cloud-config\nssh_authorized_keys: [ORGKEY]\n"})
    web.post(f"/cloud-config/hosts/{host.pk}/", {"content": "#cloud-config\nhostname: mine\n"})
    page = web.get(f"/cloud-config/hosts/{host.pk}/").content.decode()
    assert 'id="cc-effective"' in page and "ORGKEY" in page and "hostname: mine" in page
    index = web.get("/cloud-config/").content.decode()
    assert host.hostname in index and "Organization" in index


@pytest.mark.parametrize("n", [2, 8])
def test_the_group_panel_uses_a_fixed_number_of_queries(alice, web_group, make_host, django_assert_max_num_queries, n):
    for _ in range(n):
        make_host(web_group)
    web = login(alice)
    web.get("/cloud-config/")  # warm the session
    with django_assert_max_num_queries(8):
        assert web.get(f"/cloud-config/groups/{web_group.pk}/hosts").status_code == 200
