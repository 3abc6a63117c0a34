"""The dashboard (`artifactstore serve`), run as its own process (uvicorn on 127.0.0.1, a random
port) over a store with a month of history (showcase.py), driven in a real headless Chromium:
Debian's `chromium` package through Playwright's Python API (scripts/test installs both).

The overview and model pages are written to docs/screenshots/ on every run (the README shows them).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import run_cli
from playwright.sync_api import expect, sync_playwright
from showcase import build_showcase

from artifactstore import Store
from artifactstore.clock import timestamp
from artifactstore.demo import adapter_history, write_bundle
from artifactstore.ids import parse_id
from artifactstore.registry import queries
from artifactstore.registry.state import object_key
from artifactstore.web.dashboard import Dashboard
from artifactstore.web.history import Moment, in_production, pointer_spans

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
SECRET = "correct-horse-battery-staple-42"
TOKEN = f"jane:{SECRET}"
MODEL = "acme/support"
WAIT_MS = 20_000  # how long a page may take to show a change before the test fails (a wait, not a timing)


@pytest.fixture(scope="module")
def showcase(tmp_path_factory):
    """(directory holding the store "agency-store", the time its history ends)."""
    root = tmp_path_factory.mktemp("showcase")
    store, end = build_showcase(root)
    store.path.rename(root / "agency-store")
    return root, end.isoformat().replace("+00:00", "Z")


@pytest.fixture
def site(showcase, tmp_path):
    """A copy of the showcase store for one test (tests act on it), and its history's end."""
    root, end = showcase
    shutil.copytree(root / "agency-store", tmp_path / "agency-store")
    return tmp_path, end


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "tests/test_web.py needs Debian's chromium (apt-get install chromium; " \
                                    "./scripts/test installs it)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    yield context.new_page()
    context.close()


@contextmanager
def dashboard(site, *args: str, token: str | None = None):
    """`artifactstore serve` over the site's store, at the time its history ends; its URL."""
    directory, end = site
    env = {**os.environ, "ARTIFACTSTORE_NOW": end}
    env.pop("ARTIFACTSTORE_UI_TOKEN", None)
    if token:
        env["ARTIFACTSTORE_UI_TOKEN"] = token
    # run in the store's parent, naming it relatively: the pages show "agency-store", the same in
    # every run, so that the screenshots change only when the pages do
    server = subprocess.Popen([sys.executable, "-m", "artifactstore", "serve", "--port", "0", "--json",
                               "--poll", "0.3", "--store", "agency-store", *args],
                              cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line, server.stderr.read()
        yield json.loads(line)["listening"]
    finally:
        server.terminate()
        server.wait(30)


def open_model(page, url: str, model: str = MODEL):
    page.goto(f"{url}/")
    page.get_by_role("link", name=model.split("/")[1], exact=True).click()
    expect(page.locator("h1")).to_have_text(model)


def sign_in(page, secret: str = SECRET):
    page.get_by_role("link", name="sign in to act").first.click()
    page.locator("input[name=token]").fill(secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("header.top")).to_contain_text("signed in as ui:jane")


def submit(page, form: str, button: str, reason: str, version: str | None = None) -> None:
    """Fill the action form ``#form-<form>`` (its version, when it has one, and its reason) and send it."""
    fields = page.locator(f"#form-{form}")
    if version is not None:
        fields.locator("select[name=version]").select_option(version)
    fields.locator("input[name=reason]").fill(reason)
    fields.get_by_role("button", name=button).click()


def production(page):
    return page.locator("#pointers [data-pointer=production]")


def audit_length(site) -> int:
    return len(Store(site[0] / "agency-store").log(MODEL))


def test_pages_show_the_registry_and_are_screenshotted(site, page):
    with dashboard(site, token=TOKEN) as url:
        page.goto(f"{url}/")
        support = page.locator(f"tr[data-model='{MODEL}']")
        expect(support.locator("[data-pointer=production]")).to_have_text("v1.3.0")
        expect(support).to_contain_text("v1.4.0 · 10%")  # the canary and its share
        expect(support).to_contain_text("investigate")  # drift, read by the background pass
        expect(page.locator("#client-acme")).to_contain_text("dedup")  # stored bytes per client
        for model in ("acme/billing-bot", "globex/triage", "initech/summarizer", "initech/tagger"):
            expect(page.locator(f"tr[data-model='{model}']")).to_be_visible()
        expect(page.locator("#live")).to_have_class("live on")
        SCREENSHOTS.mkdir(exist_ok=True)
        page.set_viewport_size({"width": 1360, "height": 640})  # the page, without a screen of blank below it
        page.screenshot(path=SCREENSHOTS / "overview.png", full_page=True)
        page.set_viewport_size({"width": 1360, "height": 900})

        open_model(page, url)
        sign_in(page)
        expect(page.locator("#versions tr[data-version='v1.2.0']")).to_contain_text("accepted")  # the gate's verdict
        expect(page.locator("#timeline svg")).to_be_visible()
        expect(page.locator("#drift svg")).to_have_count(4)  # a PSI chart per feature
        expect(page.locator("#drift")).to_contain_text("0.2 investigate")
        expect(page.locator("#lineage")).to_contain_text("acme/support@v1.2.0")  # shares tensors, same data
        expect(page.locator("#live")).to_have_class("live on")
        page.screenshot(path=SCREENSHOTS / "model.png", full_page=True)

        # what was in production on a day, from the audit log: on the day of the rollback, two versions
        page.locator("input[name=at]").fill("2026-11-03")
        page.get_by_role("button", name="Show").first.click()
        expect(page.locator("#at-answer")).to_contain_text("On 2026-11-03, production was v1.2.0")
        expect(page.locator("#at-answer")).to_contain_text("v1.1.0 (2026-11-03 18:00 – 2026-11-05 19:00)")
        expect(page.locator("#timeline .bar.highlighted")).to_have_count(2)
        page.goto(f"{url}/m/{MODEL}?at=2026-11-04T09:30Z")
        expect(page.locator("#at-answer")).to_have_text(re.compile(r"At 2026-11-04T09:30Z, production was v1\.1\.0 "))

        # a metric across versions, chosen from a select
        page.locator("#metric select[name=metric]").select_option("latency_ms")
        page.locator("#metric").get_by_role("button", name="Show").click()
        expect(page.locator("#metric svg")).to_have_attribute("aria-label", "latency_ms across versions")

        page.get_by_role("link", name="compare versions").click()
        expect(page.locator("#changelog")).to_contain_text("## Model Update: acme/support v1.4.0")
        expect(page.locator("#metrics")).to_contain_text("hallucination_rate")
        expect(page.locator("#tensors")).to_contain_text("changed")


def test_rollback_with_a_token_changes_the_page_and_the_audit_log(site, page):
    with dashboard(site, token=TOKEN) as url:
        open_model(page, url)
        expect(page.locator("#actions")).to_contain_text("sign in with a token")
        sign_in(page)
        expect(production(page)).to_have_text("v1.3.0")
        submit(page, "rollback", "Roll back", "refund answers regressed for the client")
        expect(page.locator("[data-message=ok]")).to_contain_text("production is v1.1.0 (recorded as ui:jane)")
        expect(production(page)).to_have_text("v1.1.0")
        newest = page.locator("#log tr[data-seq]").first
        expect(newest).to_contain_text("ui:jane")
        expect(newest).to_contain_text("refund answers regressed for the client")
        assert SECRET not in page.content()
    entry = Store(site[0] / "agency-store").log(MODEL)[-2]  # the rollback of production, then its target
    assert (entry.actor, entry.action, entry.pointer, entry.to) == ("ui:jane", "rollback", "production", "v1.1.0")


def test_a_review_and_a_promotion_from_the_page(site, page):
    with dashboard(site, token=TOKEN) as url:
        open_model(page, url)
        sign_in(page)
        submit(page, "review", "Record", "tone and refunds checked", "v1.4.0")
        expect(page.locator("[data-message=ok]")).to_contain_text("acme/support@v1.4.0 approved")
        expect(page.locator("#versions tr[data-version='v1.4.0']")).to_contain_text("approved")
        submit(page, "promote", "Promote", "canary held, review done", "v1.4.0")
        expect(production(page)).to_have_text("v1.4.0")
        submit(page, "target", "Set", "v1.3.0 shares v1.2.0's tone problem", "v1.1.0")
        expect(page.locator("#pointers [data-pointer=rollback_target]")).to_have_text("v1.1.0")
    state = Store(site[0] / "agency-store").state(MODEL)
    assert (state.pointer("production"), state.pointer("rollback_target")) == ("v1.4.0", "v1.1.0")


def test_a_canary_rollout_started_and_aborted_from_the_page(site, page):
    with dashboard(site, token=TOKEN) as url:
        open_model(page, url)
        sign_in(page)
        submit(page, "review", "Record", "tone and refunds checked", "v1.4.0")
        submit(page, "rollout-start", "Start", "monthly retrain, gate and review passed", "v1.4.0")
        expect(page.locator("#release")).to_contain_text("v1.4.0 step 1 of 3 at 10%")
        expect(page.locator("#pointers [data-pointer=canary]")).to_contain_text("v1.4.0")
        submit(page, "rollout-abort", "Abort v1.4.0", "error rate rising on the canary")
        expect(page.locator("[data-message=ok]")).to_contain_text("rollout is aborted")
        expect(production(page)).to_have_text("v1.3.0")
    state = Store(site[0] / "agency-store").state(MODEL)
    assert state.canary is None and state.rollout is None and state.pointer("production") == "v1.3.0"
    assert [e.actor for e in Store(site[0] / "agency-store").log(MODEL)[-2:]] == ["ui:jane", "ui:jane"]


def test_a_refused_move_says_why_and_changes_nothing(site, page):
    with dashboard(site, token=TOKEN) as url:
        open_model(page, url)
        sign_in(page)
        before = audit_length(site)
        submit(page, "promote", "Promote", "try", "v1.4.0")  # gated, not reviewed: the policy says no
        expect(page.locator("[data-message=error]")).to_contain_text("may not become production under its policy")
        expect(production(page)).to_have_text("v1.3.0")
    assert audit_length(site) == before


def test_actions_are_refused_without_a_token(site, page):
    before = audit_length(site)
    with dashboard(site) as url:  # started without any token: read-only
        open_model(page, url)
        expect(page.locator("header.top")).to_contain_text("read-only")
        expect(page.locator("#actions")).to_have_count(0)
        answer = page.request.post(f"{url}/m/{MODEL}/actions/rollback", form={"reason": "no token", "csrf": "x"})
        assert answer.status == 403 and "actions are off" in answer.text()
    with dashboard(site, token=TOKEN) as url:  # a token exists, but this browser has not signed in
        open_model(page, url)
        answer = page.request.post(f"{url}/m/{MODEL}/actions/rollback", form={"reason": "not signed in", "csrf": "x"})
        assert answer.status == 403 and "sign in with a token" in answer.text()
        page.goto(f"{url}/login")
        page.locator("input[name=token]").fill("jane:not-the-secret-at-all")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#login-error")).to_contain_text("not a token this server was started with")
    assert audit_length(site) == before


def test_an_action_needs_a_reason(site, page):
    with dashboard(site, token=TOKEN) as url:
        open_model(page, url)
        sign_in(page)
        before = audit_length(site)
        rollback = page.locator("#form-rollback")
        assert rollback.locator("input[name=reason]").get_attribute("required") is not None
        # past the browser's own check, the server refuses too
        rollback.locator("input[name=reason]").evaluate("field => field.removeAttribute('required')")
        rollback.locator("input[name=reason]").fill("   ")
        rollback.get_by_role("button", name="Roll back").click()
        expect(page.locator("[data-message=error]")).to_contain_text("a reason is required")
        expect(production(page)).to_have_text("v1.3.0")
    assert audit_length(site) == before


def test_a_post_without_the_form_token_is_refused(site, page):
    with dashboard(site, token=TOKEN) as url:
        open_model(page, url)
        sign_in(page)
        before = audit_length(site)
        csrf = page.locator("#form-rollback input[name=csrf]").get_attribute("value")
        target = f"{url}/m/{MODEL}/actions/rollback"
        for form in ({"reason": "no form token"}, {"reason": "a wrong one", "csrf": "forged"}):
            answer = page.request.post(target, form=form)  # the session cookie goes with it
            assert answer.status == 403 and "CSRF token is missing or wrong" in answer.text()
        answer = page.request.post(target, form={"reason": "from elsewhere", "csrf": csrf},
                                   headers={"Origin": "http://attacker.example"})
        assert answer.status == 403 and "from another site" in answer.text()
        assert page.request.get(target).status == 405  # no GET acts
    assert audit_length(site) == before


def test_a_form_from_an_allowed_name_is_taken_through_a_proxy_that_rewrites_the_host(site, page):
    """Behind a proxy that sends the upstream's address as the Host, the browser's Origin is the
    proxy's name: accepted when the server was told it (--allowed-host)."""
    with dashboard(site, "--allowed-host", "*.example.com", token=TOKEN) as url:
        open_model(page, url)
        sign_in(page)
        before = audit_length(site)
        csrf = page.locator("#form-rollback input[name=csrf]").get_attribute("value")
        target = f"{url}/m/{MODEL}/actions/rollback"
        for origin in ("https://dash.example.org", "http://localhost:1", "http://127.0.0.1:9"):
            answer = page.request.post(target, form={"reason": "elsewhere", "csrf": csrf}, headers={"Origin": origin})
            assert answer.status == 403 and "from another site" in answer.text(), origin
        assert audit_length(site) == before
        answer = page.request.post(target, form={"reason": "through the proxy", "csrf": csrf}, max_redirects=0,
                                   headers={"Origin": "https://dash.example.com"})
        assert answer.status == 303
    assert audit_length(site) > before


def test_a_live_refresh_leaves_an_actions_message_to_the_page_it_redirects_to(site, page):
    """An action changes the registry, which wakes live.js in the page that sent the form: its
    refresh, racing the browser's redirect, must not take the message meant for the next page."""
    with dashboard(site, token=TOKEN) as url:
        open_model(page, url)
        sign_in(page)
        csrf = page.locator("#form-rollback input[name=csrf]").get_attribute("value")
        answer = page.request.post(f"{url}/m/{MODEL}/actions/rollback", max_redirects=0,
                                   form={"reason": "paged at 3am", "csrf": csrf})
        assert answer.status == 303
        refreshed = page.request.get(f"{url}/m/{MODEL}", headers={"X-Live-Refresh": "1"})
        assert refreshed.ok and "data-message" not in refreshed.text()
        assert 'data-message="ok"' in page.request.get(f"{url}/m/{MODEL}").text()  # once
        assert "data-message" not in page.request.get(f"{url}/m/{MODEL}").text()


def test_a_rollback_from_the_command_line_shows_in_an_open_page(site, page, browser):
    with dashboard(site) as url:
        open_model(page, url)
        overview = browser.new_page()
        overview.goto(f"{url}/")
        row = overview.locator(f"tr[data-model='{MODEL}'] [data-pointer=production]")
        expect(row).to_have_text("v1.3.0")
        expect(page.locator("#live")).to_have_class("live on")
        done = run_cli("rollback", MODEL, "--reason", "paged at 3am", "--by", "oncall",
                       "--store", site[0] / "agency-store", env={"ARTIFACTSTORE_NOW": site[1]})
        assert done.returncode == 0, done.stderr
        expect(production(page)).to_have_text("v1.1.0", timeout=WAIT_MS)
        expect(page.locator("#log tr[data-seq]").first).to_contain_text("paged at 3am", timeout=WAIT_MS)
        expect(row).to_have_text("v1.1.0", timeout=WAIT_MS)
        overview.close()


def test_serving_beyond_the_loopback_needs_a_token(site):
    refused = run_cli("serve", "--host", "0.0.0.0", "--port", "0", "--store", site[0] / "agency-store",
                      env={"ARTIFACTSTORE_UI_TOKEN": ""})
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 is not a loopback address: serving there needs a token (ARTIFACTSTORE_UI_TOKEN or "
        "--token-file), or bind 127.0.0.1"]
    weak = run_cli("serve", "--store", site[0] / "agency-store", env={"ARTIFACTSTORE_UI_TOKEN": "jane:short"})
    assert weak.returncode == 1 and "short" not in weak.stderr and "at least 16 characters" in weak.stderr


def test_pages_need_signing_in_beyond_the_loopback(site, page, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# who may act\n{TOKEN}\nmaria:{'m' * 20}\n")
    with dashboard(site, "--host", "0.0.0.0", "--token-file", str(tokens)) as url:
        url = url.replace("0.0.0.0", "127.0.0.1")
        page.goto(f"{url}/m/{MODEL}")
        expect(page.locator("input[name=token]")).to_be_visible()  # sent to sign in first
        page.locator("input[name=token]").fill(f"maria:{'m' * 20}")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("h1")).to_have_text(MODEL)  # and back where it was going
        expect(page.locator("header.top")).to_contain_text("signed in as ui:maria")


def test_lineage_and_timeline_answer_as_the_registry_queries_do(showcase):
    root, _ = showcase
    store = Store(root / "agency-store")
    board = Dashboard(store)
    board.refresh()
    page = board.model_page(MODEL, version="v1.3.0", at="2026-11-03")
    lineage = page["lineage"]
    assert sorted((s["ref"], s["shared"]) for s in lineage["sharing"]) == sorted(
        (s["ref"], s["shared_tensors"]) for s in queries.sharing(store.registry, f"{MODEL}@v1.3.0"))
    for dataset, refs in lineage["same_data"].items():
        assert sorted(refs) == sorted(r["ref"] for r in queries.lineage(store.registry, training_data=dataset)
                                      if r["ref"] != f"{MODEL}@v1.3.0")
    # production at every audited moment is what the state of that moment said
    spans = pointer_spans(store.log(MODEL))
    for _, state in store.states(MODEL):
        if state.entries:
            moment = Moment.parse(state.entries[-1].at)
            answer = in_production(spans, moment)
            assert [s.version for s in answer] == ([state.pointer("production")] if state.pointer("production")
                                                   else [])


def test_a_damaged_state_in_the_middle_leaves_the_newer_log_on_the_page(site):
    """As `artifactstore log` does: the entries newer than the damage, and what is wrong, not an error page."""
    store = Store(site[0] / "agency-store")
    readable = [e.seq for _, made in list(store.registry.trail(MODEL))[:3] for e in made]
    damaged = store.registry.read_state_object(list(store.registry.trail(MODEL))[2][0]).parent
    store.backend.write(object_key(parse_id(damaged)), b"{}")
    board = Dashboard(Store(site[0] / "agency-store"))
    board.refresh()
    shown = board.model_page(MODEL, full_log=True)
    assert sorted(e.seq for e in shown["log"]) == sorted(readable) and damaged in shown["log_damaged"]
    with dashboard(site) as url:
        answer = httpx.get(f"{url}/m/{MODEL}")
    assert answer.status_code == 200 and "data-log-damaged" in answer.text and damaged in answer.text


def test_a_model_whose_current_state_is_damaged_shows_its_error_on_the_overview_beside_the_others(site):
    store = Store(site[0] / "agency-store")
    models = store.models()
    damaged = models[-1]
    store.backend.write(object_key(parse_id(store.state(damaged).id)), b"")
    with dashboard(site) as url:
        answer = httpx.get(url)
    assert answer.status_code == 200 and 'class="verdict-fail"' in answer.text and f"/m/{damaged}" in answer.text
    for model in models[:-1]:
        assert f"/m/{model}" in answer.text


def test_over_a_shared_bucket_with_its_events(s3_bucket, tmp_path):
    """The same server over a store in a bucket (a real S3-protocol server): pages, and /events
    announcing a rollback made by another process."""
    store = Store.init(s3_bucket, cache=tmp_path / "cache")
    bundles = [write_bundle(v, tmp_path / v.name) for v in adapter_history(layers=1, scale=64)[:3]]
    for bundle, version in zip(bundles, ("v1.0.0", "v1.1.0", "v1.1.1")):
        store.push(bundle, f"{MODEL}@{version}")
        store.promote(f"{MODEL}@{version}", reason="release")
    server = subprocess.Popen([sys.executable, "-m", "artifactstore", "serve", "--port", "0", "--json", "--poll", "0.5",
                               "--store", s3_bucket], env={**os.environ, "ARTIFACTSTORE_CACHE": str(tmp_path / "c2")},
                              stdout=subprocess.PIPE, text=True)
    try:
        url = json.loads(server.stdout.readline())["listening"]
        with httpx.Client(base_url=url, timeout=30) as client:
            page = client.get(f"/m/{MODEL}")
            assert page.status_code == 200 and 'data-pointer="production">v1.1.1<' in page.text
            assert client.get("/").status_code == 200
            assert "Configuration changes" in client.get(f"/m/{MODEL}/compare").text
            with client.stream("GET", "/events") as events:
                lines = events.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                done = run_cli("rollback", MODEL, "--reason", "bad", "--store", s3_bucket,
                               env={"ARTIFACTSTORE_CACHE": str(tmp_path / "c3")})
                assert done.returncode == 0, done.stderr
                assert next(line for line in lines if line.startswith("data: ")) != first
            assert 'data-pointer="production">v1.1.0<' in client.get(f"/m/{MODEL}").text
    finally:
        server.terminate()
        server.wait(30)


def test_without_the_serve_extra_one_line_says_what_to_install(tmp_path):
    Store.init(tmp_path / "store")
    blocked = subprocess.run([sys.executable, "-c", "import sys; sys.modules['jinja2'] = None; "
                              "from artifactstore.cli import main; main()", "serve", "--store", tmp_path / "store"],
                             capture_output=True, text=True)
    assert blocked.returncode == 1
    assert blocked.stderr == "error: the dashboard needs jinja2: pip install 'artifactstore[serve]'\n"


def test_a_page_is_served_only_for_the_names_the_server_is_reached_by(site):
    """DNS rebinding: a site that points its own name at 127.0.0.1 sends its name as the Host, and
    must not read the pages a loopback server shows without a token."""
    with dashboard(site, "--allowed-host", "dash.example.com") as url:
        port = urlsplit(url).port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "dash.example.com"):
            assert httpx.get(f"{url}/m/{MODEL}", headers={"host": host}).status_code == 200, host
        rebound = httpx.get(f"{url}/m/{MODEL}", headers={"host": f"attacker.example:{port}"})
        assert rebound.status_code == 400 and "v1.3.0" not in rebound.text
    refused = run_cli("serve", "--allowed-host", "dash.example.com:443", "--port", "0",
                      "--store", site[0] / "agency-store")
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        "error: not a host name to allow: 'dash.example.com:443' (a name such as dash.example.com, a wildcard such "
        "as *.example.com, or an address)"]


def test_a_time_outside_the_years_a_registry_spans_is_a_400_page(site):
    with dashboard(site) as url:
        for at in ("9999-12-31", "9999-12-31T23:59:59.999999Z", "0001-01-01", "0001-01-01T00:00+01:00"):
            answer = httpx.get(f"{url}/m/{MODEL}", params={"at": at})
            assert answer.status_code == 400 and "is outside the years 1970 to 2099" in answer.text, at


def test_a_pointer_the_page_showed_unset_is_not_moved_once_someone_set_it(tmp_path, page):
    """The form carries the pointer as the page showed it; unset is a version to expect too."""
    store = Store.init(tmp_path / "agency-store")
    for version in adapter_history(layers=1, scale=16)[:3]:
        store.push(write_bundle(version, tmp_path / "bundles" / version.name), f"{MODEL}@{version.name}")
    store.promote(f"{MODEL}@v1.0.0", reason="launch")
    with dashboard((tmp_path, timestamp()), token=TOKEN) as url:
        open_model(page, url)
        sign_in(page)
        form = page.locator("#form-target")
        shown = {field: form.locator(f"input[name={field}]").get_attribute("value") for field in ("csrf", "expect")}
        assert shown["expect"] == ""  # the page shows the rollback target unset
        store.set_rollback_target(f"{MODEL}@v1.1.0", actor="bob", reason="meanwhile, from the command line")
        answer = page.request.post(f"{url}/m/{MODEL}/actions/target",  # to the page it redirects to
                                   form={**shown, "version": "v1.1.1", "reason": "set from the page"})
        assert f"{MODEL}@rollback_target is v1.1.0, not unset as expected; nothing changed" in answer.text()
    assert store.state(MODEL).pointer("rollback_target") == "v1.1.0"
    # the command line says the same with --expect none
    moved = run_cli("target", "set", f"{MODEL}@v1.1.1", "--expect", "none", "--store", store.path)
    assert moved.returncode == 1 and "is v1.1.0, not unset as expected" in moved.stderr
    staged = run_cli("stage", f"{MODEL}@v1.1.1", "--expect", "none", "--store", store.path)
    assert staged.returncode == 0 and store.state(MODEL).pointer("staging") == "v1.1.1"


def test_metric_values_whose_range_is_no_float_still_make_a_page(tmp_path):
    """Finite scores of 1.5e308 and -1.5e308 (a push takes them): their range overflows, and the
    chart's ticks must not."""
    from starlette.testclient import TestClient

    from artifactstore.web.app import create_app

    store = Store.init(tmp_path / "store")
    for version, score in zip(adapter_history(layers=1, scale=16)[:2], (1.5e308, -1.5e308)):
        bundle = write_bundle(version, tmp_path / version.name)
        (bundle / "eval_results.json").write_text(json.dumps({"score": score}))
        store.push(bundle, f"{MODEL}@{version.name}")
    with TestClient(create_app(store, []), base_url="http://127.0.0.1") as client:
        page = client.get(f"/m/{MODEL}")
    assert page.status_code == 200 and '="nan"' not in page.text and ">inf<" not in page.text  # drawn, not blank
