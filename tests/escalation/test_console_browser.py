"""The console in a real browser: Debian's chromium, driven by Playwright (PyPI `playwright`,
launched with executable_path=/usr/bin/chromium; `playwright install` is never run and nothing
is downloaded), against a real `glassbreak serve`, with runs blocked and rerun by the real
`glassbreak run` (root, in process, the same state dir).

Screenshots of every page go to $GLASSBREAK_SCREENSHOTS (the README's come from
`GLASSBREAK_SCREENSHOTS=docs/console pytest tests/escalation/test_console_browser.py`), else to
the test's temporary directory."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, is_root, require, run_cli
from tests.escalation.helpers import Serve, token_sha

pytestmark = pytest.mark.kernel

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--disable-dev-shm-usage"]
XSS_REASON = '<img src=x onerror="window.__xss=1">pod is wedged'
XSS_ARG = "<script>window.__xss=2</script>"
PROFILES = {
    "console-k8s.yaml": "name: console-k8s\nextends: k8s-readonly\nowners: [alice]\n"
                        "escalation:\n  relaxedProfile: console-k8s-ops\n  ttl: 5m\n"
                        "  maxTtl: 30m\n",
    "console-k8s-ops.yaml": "name: console-k8s-ops\nextends: k8s-ops-escalated\nrelax: true\n",
}


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = os.environ.get("GLASSBREAK_SCREENSHOTS")
    out = (REPO / d if not os.path.isabs(d) else Path(d)) if d else \
        tmp_path_factory.mktemp("shots")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    require(is_root(), "the runs in these tests need root (seccomp, eBPF, cgroups)")
    work = tmp_path_factory.mktemp("browser")
    pdir = work / "profiles"
    pdir.mkdir()
    for name, text in PROFILES.items():
        (pdir / name).write_text(text)
    s = Serve(work, {"approvers": {"alice": {"tokenSha256": token_sha("alice-token")},
                                   "bob": {"tokenSha256": token_sha("bob-token")}}},
              env={"GLASSBREAK_PROFILE_PATH": str(pdir)})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(os.path.exists(CHROMIUM), "Debian's chromium is not installed (make setup)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright is not installed (make setup: the dev dependencies)")
        raise
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) at phone width; every dialog is recorded."""
    ctx = browser.new_context(viewport={"width": 390, "height": 844})
    pg = ctx.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    ctx.close()


def run(srv: Serve, *argv: str, reason: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**srv.env, "GLASSBREAK_AGENT": "bot-1", "GLASSBREAK_NO_DAEMON": "1"}
    extra = ["--reason", reason] if reason else []
    return run_cli("run", "-o", "json", "-p", "console-k8s", *extra, "--", *argv, env=env)


def result(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return dict(json.loads(r.stderr.strip().splitlines()[-1]))


def blocked(srv: Serve, pod: str, reason: str | None = None, *extra: str) -> str:
    r = run(srv, "kubectl", "-n", "prod", "delete", "pod", pod, *extra, reason=reason)
    assert r.returncode == 126, r.stderr
    return str(result(r)["escalation_id"])


def sign_in(pg: Any, srv: Serve, token: str = "alice-token", path: str = "/escalations") -> None:
    pg.goto(srv.base + path)
    pg.fill("#token", token)
    pg.click("form[action='/signin'] button[type=submit]")
    pg.wait_for_load_state()


def no_sideways_scroll(pg: Any) -> None:
    sw, iw = pg.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert sw <= iw, f"{pg.url}: {sw} px wide in a {iw} px window"


def shot(pg: Any, shots: Path, name: str) -> None:
    pg.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def test_approve_command_once_rerun_passes_once_xss_is_text(
        srv: Serve, page: Any, shots: Path, stub_kubectl: Path) -> None:
    esc = blocked(srv, XSS_ARG, XSS_REASON)
    resp = page.goto(f"{srv.base}/escalations")
    assert resp.status == 401 and page.locator("#token").is_visible()
    shot(page, shots, "signin")
    sign_in(page, srv)
    assert page.url.endswith("/escalations")
    item = page.locator(f"a[href='/escalations/{esc}']")
    assert item.is_visible() and "pending" in item.inner_text()
    no_sideways_scroll(page)
    shot(page, shots, "inbox")

    item.click()
    page.wait_for_load_state()
    main = page.locator("main")
    text = main.inner_text()
    # the payloads are shown as text, never run or parsed as markup
    assert XSS_REASON in text and XSS_ARG in text
    assert main.locator("img").count() == 0 and main.locator("script").count() == 0
    assert page.evaluate("window.__xss") is None and page.dialogs == []
    assert page.locator("ol.argv li").count() == 6
    assert "What approving opens" in text and "console-k8s-ops" in text
    no_sideways_scroll(page)
    shot(page, shots, "request")

    page.check("input[name=scope][value=command]")
    page.check("input[name=one_shot]")
    page.fill("#ttl", "10")
    page.select_option("select[name=ttl_unit]", "m")
    page.fill("#reason", "restart is safe")
    page.click("button[value=approve]")
    page.wait_for_load_state()
    assert "Approved. Grant gr-" in page.locator(".flash").inner_text()
    assert "one-shot" in page.locator(".flash").inner_text()
    rec = srv.svc.get(esc)
    assert rec is not None and rec.state == "approved" and rec.decided_by == "alice"
    grant = srv.svc.get_grant(rec.grant_id or "")
    assert grant is not None and grant.scope == "command" and grant.one_shot
    assert 590 <= grant.expires_at - grant.created_at <= 610
    assert page.locator("form.revoke").is_visible()
    shot(page, shots, "request-approved")

    # the agent's rerun of exactly that command passes once, then blocks again
    r = run(srv, "kubectl", "-n", "prod", "delete", "pod", XSS_ARG)
    assert r.returncode == 0, r.stderr
    assert f"stub-kubectl -n prod delete pod {XSS_ARG}" in r.stdout
    again = run(srv, "kubectl", "-n", "prod", "delete", "pod", XSS_ARG)
    assert again.returncode == 126
    assert page.evaluate("window.__xss") is None and page.dialogs == []


def test_deny_needs_a_reason(srv: Serve, page: Any, stub_kubectl: Path) -> None:
    esc = blocked(srv, "deny-me")
    sign_in(page, srv, path=f"/escalations/{esc}")
    page.click("button[value=deny]")
    page.wait_for_load_state()
    assert "A denial needs a reason" in page.locator(".error").inner_text()
    assert srv.svc.get(esc).state == "pending"  # type: ignore[union-attr]
    page.fill("#reason", "not during the freeze")
    page.click("button[value=deny]")
    page.wait_for_load_state()
    rec = srv.svc.get(esc)
    assert rec is not None and rec.state == "denied"
    assert rec.decision_reason == "not during the freeze" and rec.decided_by == "alice"
    assert "not during the freeze" in page.locator("#resolution").inner_text()


def test_revoke_ends_a_grant(srv: Serve, page: Any, shots: Path, stub_kubectl: Path) -> None:
    esc = blocked(srv, "revoke-me")
    sign_in(page, srv, path=f"/escalations/{esc}")
    page.check("input[name=scope][value=profile]")
    page.click("button[value=approve]")
    page.wait_for_load_state()
    rec = srv.svc.get(esc)
    assert rec is not None and rec.state == "approved" and rec.grant_id
    r = run(srv, "kubectl", "-n", "prod", "delete", "pod", "revoke-me")
    assert r.returncode == 0, r.stderr  # the relaxed profile, for this agent

    page.goto(f"{srv.base}/grants")
    card = page.locator("li.grant", has_text=rec.grant_id)
    assert "active" in card.inner_text() and "left" in card.inner_text()
    no_sideways_scroll(page)
    shot(page, shots, "grants")
    card.locator("input[name=reason]").fill("incident closed")
    card.locator("button.danger").click()
    page.wait_for_load_state()
    assert "revoked" in page.locator(".flash").inner_text()
    assert srv.svc.grant_status(rec.grant_id) == "revoked"
    g = srv.svc.get_grant(rec.grant_id)
    assert g is not None and g.revoked_by == "alice" and g.revoke_reason == "incident closed"
    r = run(srv, "kubectl", "-n", "prod", "delete", "pod", "revoke-me")
    assert r.returncode == 126  # strict again


def test_wrong_token_changes_nothing_then_the_right_one_works(
        srv: Serve, page: Any, stub_kubectl: Path) -> None:
    esc = blocked(srv, "token-typo")
    before, grants = srv.svc.get(esc), srv.svc.list_grants(include_ended=True)
    page.goto(f"{srv.base}/escalations/{esc}")
    page.fill("#token", "alice-tokn")
    page.click("form[action='/signin'] button[type=submit]")
    page.wait_for_load_state()
    assert "not an approver token" in page.locator(".error").inner_text()
    assert srv.svc.get(esc) == before
    assert srv.svc.list_grants(include_ended=True) == grants
    page.fill("#token", "alice-token")
    page.click("form[action='/signin'] button[type=submit]")
    page.wait_for_load_state()
    assert page.url.endswith(f"/escalations/{esc}")  # back where the link pointed
    page.fill("#reason", "typo test")
    page.click("button[value=deny]")
    page.wait_for_load_state()
    assert srv.svc.get(esc).state == "denied"  # type: ignore[union-attr]


def test_a_non_owner_sees_why_and_has_no_form(srv: Serve, page: Any,
                                              stub_kubectl: Path) -> None:
    esc = blocked(srv, "not-bobs")
    sign_in(page, srv, token="bob-token", path=f"/escalations/{esc}")
    assert "not an owner or approver" in page.locator("#owners").inner_text()
    assert page.locator("form.decide").count() == 0


def test_every_page_fits_a_phone(srv: Serve, browser: Any, shots: Path,
                                 stub_kubectl: Path) -> None:
    """390 px wide (a phone): no page scrolls sideways, even with a hostile argv. Also saves the
    desktop screenshots."""
    hostile = ["web-1 --all", "web-1" + " " * 300 + "-n kube-system --all", "web-4\u202e lla-- ",
               "x" * 400]
    esc = blocked(srv, *hostile[:1], "pods are wedged", *hostile[1:])
    r = run(srv, "sh", "-c", "ls / >/dev/null; cat /etc/hostname")
    assert r.returncode == 0, r.stderr
    run_id = result(r)["run_id"]
    pages = {"inbox": "/escalations", "request-hostile": f"/escalations/{esc}",
             "grants": "/grants?all=1", "audit": "/audit", "run": f"/runs/{run_id}"}
    for width, suffix in ((390, "-phone"), (1200, "")):
        ctx = browser.new_context(viewport={"width": width, "height": 900})
        pg = ctx.new_page()
        try:
            pg.goto(srv.base + "/signin")
            no_sideways_scroll(pg)
            sign_in(pg, srv)
            for name, path in pages.items():
                resp = pg.goto(srv.base + path)
                assert resp.status == 200, (path, resp.status)
                no_sideways_scroll(pg)
                shot(pg, shots, name + suffix)
            text = pg.locator("main").inner_text()
            assert "sh -c 'ls / >/dev/null; cat /etc/hostname'" in text  # the run's tree
        finally:
            ctx.close()
