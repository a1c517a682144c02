"""The web dashboard in a real browser (headless Chromium from Debian, driven by Selenium with
Debian's chromedriver) against a real `ferry serve` and a real `modal run`; `/metrics` read
with Prometheus' own text parser; `ferry status` and `ferry doctor`."""

import os
import re
import signal
import sys
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

APPS = Path(__file__).parent / "apps"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="needs chromium and chromium-driver (tools/setup.d/dashboard.sh)",
)


def dashboard_url(server) -> str:
    text = Path(server.log.name).read_text()
    m = re.search(r"Dashboard and /metrics at (http://\S+)", text)
    assert m, text
    return m.group(1)


def metrics(url: str) -> dict:
    """`(name, labels) -> value` for every sample, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    body = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def rpc_count(m: dict, method: str, code: str = "OK") -> float:
    return m.get(("ferry_rpc_requests_total", (("code", code), ("method", method))), 0.0)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900"):
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    opts.add_argument(f"--user-data-dir={profile}")
    # An explicit driver path: selenium-manager never runs, nothing is downloaded.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for(fn, timeout=60, every=0.3, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # the page may be mid-reload
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def test_dashboard_in_a_browser(runner, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url = dashboard_url(runner)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    before = metrics(url)

    secret = runner.modal("secret", "create", "--force", "dash-secret", "DASH_KEY=never-show-this-value")
    assert secret.returncode == 0, secret.stderr

    run = subprocess.Popen(
        [str(Path(sys.executable).parent / "modal"), "run", str(APPS / "dashboard.py")],
        env=runner.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        # The link the client prints is the dashboard's app page.
        printed = wait_for(lambda: re.search(r"View run at (\S+)", _peek(run)), timeout=120, what="the printed link")
        app_link = printed.group(1)
        assert app_link.startswith(url + "/apps/ap-"), app_link
        app_id = app_link.rsplit("/", 1)[1]

        # Without a session every page sends the browser to sign in.
        browser.get(app_link)
        assert "/signin" in browser.current_url
        browser.save_screenshot(str(shots / "signin.png"))
        env = runner.client_env()
        browser.find_element(By.ID, "token_id").send_keys(env["MODAL_TOKEN_ID"])
        browser.find_element(By.ID, "token_secret").send_keys(env["MODAL_TOKEN_SECRET"])
        browser.find_element(By.ID, "signin-submit").click()
        wait_for(lambda: browser.current_url == app_link, what="the app page after sign-in")
        assert "ferry-dash-demo" in browser.page_source

        # The apps list shows it running.
        browser.get(url + "/apps?state=live")
        row = browser.find_element(By.CSS_SELECTOR, f'tr[data-app-id="{app_id}"]')
        assert "running" in row.text
        browser.save_screenshot(str(shots / "apps.png"))

        # Live logs: lines arrive over server-sent events without reloading.
        browser.get(app_link + "/logs")
        wait_for(lambda: "dash-tick" in browser.find_element(By.ID, "log-lines").text, timeout=180, what="ticker output")
        n = len(browser.find_elements(By.CSS_SELECTOR, "#log-lines .line"))
        wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#log-lines .line")) > n + 2, what="more live lines")
        assert browser.find_element(By.ID, "log-status").text == "following"
        browser.find_element(By.ID, "log-filter").send_keys("dash-work 3")
        visible = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#log-lines .line") if e.is_displayed()]
        assert visible and all("dash-work 3" in t for t in visible), visible
        browser.save_screenshot(str(shots / "logs.png"))
        download = browser.find_element(By.ID, "log-download").get_attribute("href")
        assert download.endswith("/logs.txt?q=dash-work%203")
        text = browser.execute_script("return fetch(arguments[0]).then(r => r.text());", download)
        assert text == "dash-work 3\n", text

        # The failed input and its traceback on the function's page.
        browser.get(app_link)
        browser.find_element(By.LINK_TEXT, "work").click()
        wait_for(lambda: browser.find_element(By.ID, "fn-failed").text == "1", what="one failed input")
        assert browser.find_element(By.ID, "fn-succeeded").text == "4"
        details = browser.find_element(By.CSS_SELECTOR, "tr.failure details.traceback")
        details.find_element(By.TAG_NAME, "summary").click()
        assert "dash boom at input 3" in details.text
        assert "raise ValueError" in details.text
        browser.save_screenshot(str(shots / "function.png"))

        # Stop the ticker's container from the containers page.
        browser.get(url + "/containers")
        rows = browser.find_elements(By.CSS_SELECTOR, "#containers tr[data-task-id]")
        ours = [r for r in rows if app_id in r.text]
        assert ours, [r.text for r in rows]
        task_id = ours[0].get_attribute("data-task-id")
        browser.save_screenshot(str(shots / "containers.png"))
        ours[0].find_element(By.CSS_SELECTOR, "button.danger").click()
        browser.switch_to.alert.accept()
        wait_for(lambda: browser.current_url.endswith("/containers"), what="back on the containers page")

        def gone():
            browser.get(url + "/containers")
            return not browser.find_elements(By.CSS_SELECTOR, f'tr[data-task-id="{task_id}"]')

        wait_for(gone, timeout=30, every=1, what=f"container {task_id} to stop")

        # Dicts and Queues: sizes and a peek; plain pickled values read as Python would.
        put = runner.python(
            "import modal\n"
            "d = modal.Dict.from_name('dash-dict', create_if_missing=True)\n"
            "d['greeting'] = 'hello there'; d['n'] = 42; d['obj'] = [1, 2]\n"
            "q = modal.Queue.from_name('dash-queue', create_if_missing=True)\n"
            "q.clear(); q.put_many(['first', 'second'])\n"
        )
        assert put.returncode == 0, put.stderr
        browser.get(url + "/dicts")
        browser.find_element(By.LINK_TEXT, "dash-dict").click()
        wait_for(lambda: browser.find_element(By.ID, "object-size").text == "3", timeout=30,
                 what="dash-dict's page with its size")
        entries = browser.find_element(By.ID, "entries").text
        assert "'greeting'" in entries and "'hello there'" in entries and "42" in entries
        assert "5d94284b014b02652e" in entries  # the list is shown as hex, not unpickled
        browser.get(url + "/queues")
        browser.find_element(By.LINK_TEXT, "dash-queue").click()
        wait_for(lambda: browser.find_element(By.ID, "object-size").text == "2", timeout=30,
                 what="dash-queue's page with its size")
        assert "'first'" in browser.find_element(By.ID, "entries").text

        # Secrets: key names, never values.
        browser.get(url + "/secrets")
        assert "DASH_KEY" in browser.page_source
        assert "never-show-this-value" not in browser.page_source

        # A POST without the session's CSRF token is refused; with it, it works.
        status = browser.execute_script(
            "return fetch('/tokens', {method: 'POST', headers: {'content-type': 'application/x-www-form-urlencoded'},"
            " body: 'label=no-csrf'}).then(r => r.status);"
        )
        assert status == 403
        browser.get(url + "/tokens")
        assert "no-csrf" not in browser.page_source

        # Create a token (its secret is shown once), then revoke it.
        browser.find_element(By.CSS_SELECTOR, '#create-token input[name="label"]').send_keys("dash-made")
        browser.find_element(By.CSS_SELECTOR, "#create-token button").click()
        # The form posts and the browser loads the answer page; wait for it rather than
        # reading the page that is still being left.
        new_id = wait_for(lambda: browser.find_element(By.ID, "new-token-id").text, timeout=30,
                          what="the page showing the new token")
        new_secret = browser.find_element(By.ID, "new-token-secret").text
        assert new_id.startswith("ak-") or new_id, new_id
        assert len(new_secret) >= 16
        browser.save_screenshot(str(shots / "token-created.png"))
        browser.get(url + "/tokens")
        assert new_secret not in browser.page_source
        browser.find_element(By.CSS_SELECTOR, f'tr[data-token-id="{new_id}"] button.danger').click()
        browser.switch_to.alert.accept()
        wait_for(lambda: "revoked" in browser.find_element(By.CSS_SELECTOR, f'tr[data-token-id="{new_id}"]').text,
                 what="the token to show as revoked")
        # The revoked token no longer works for the client.
        refused = runner.modal("app", "list", MODAL_TOKEN_ID=new_id, MODAL_TOKEN_SECRET=new_secret)
        assert refused.returncode != 0 and "not valid" in (refused.stdout + refused.stderr)

        # Readable on a phone-sized screen.
        browser.set_window_size(390, 844)
        browser.get(url + "/apps")
        browser.save_screenshot(str(shots / "apps-phone.png"))
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(30)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()

    # Counters moved with the run: one more app, its map's inputs and outputs.
    after = metrics(url)
    assert rpc_count(after, "AppCreate") >= rpc_count(before, "AppCreate") + 1
    assert rpc_count(after, "FunctionMap") >= rpc_count(before, "FunctionMap") + 2
    assert rpc_count(after, "FunctionGetOutputs") > rpc_count(before, "FunctionGetOutputs")
    assert after[("ferry_rpc_duration_seconds_count", (("code", "OK"), ("method", "AppCreate")))] >= 1
    assert ("ferry_containers", (("state", "running"),)) in after
    # Unauthenticated calls are counted with their status.
    bad = runner.modal("app", "list", MODAL_TOKEN_ID="ak-nope", MODAL_TOKEN_SECRET="nope")
    assert bad.returncode != 0
    assert rpc_count(metrics(url), "AppList", "UNAUTHENTICATED") >= rpc_count(after, "AppList", "UNAUTHENTICATED") + 1

    # `ferry status` sees the server and the data dir.
    status = runner.ferry("status")
    assert status.returncode == 0, status.stderr
    assert "Server: running" in status.stdout and "Disk use:" in status.stdout and "ferry.db" in status.stdout


_peeked = {}


def _peek(proc) -> str:
    """What a running process printed so far (read without blocking)."""
    import fcntl

    fd = proc.stdout.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        chunk = proc.stdout.read()
    except (BlockingIOError, TypeError):
        chunk = None
    _peeked[proc.pid] = _peeked.get(proc.pid, "") + (chunk or "")
    return _peeked[proc.pid]


def test_pages_need_a_session_and_metrics_need_none(fresh_ferry):
    server = fresh_ferry()
    url = dashboard_url(server)
    for path in ("/apps", "/containers", "/tokens", "/secrets", "/dicts", "/queues"):
        req = urllib.request.Request(url + path)
        opener = urllib.request.build_opener(NoRedirect)
        try:
            opener.open(req, timeout=10)
            raise AssertionError(f"{path} answered without a session")
        except urllib.error.HTTPError as e:
            assert e.code == 303 and e.headers["location"].startswith("/signin?next="), (path, e.code)
    # A POST action without a session goes to sign-in too, and changes nothing.
    data = b"label=x&csrf=whatever"
    try:
        urllib.request.build_opener(NoRedirect).open(urllib.request.Request(url + "/tokens", data=data), timeout=10)
        raise AssertionError("POST answered without a session")
    except urllib.error.HTTPError as e:
        assert e.code == 303
    assert "x" not in [line.split()[-1] for line in server.ferry("token", "list").stdout.splitlines()[1:] if line.split()]
    # A wrong secret does not sign in.
    env = server.client_env()
    form = f"token_id={env['MODAL_TOKEN_ID']}&token_secret=wrong".encode()
    try:
        urllib.request.build_opener(NoRedirect).open(urllib.request.Request(url + "/signin", data=form), timeout=10)
        raise AssertionError("signed in with a wrong secret")
    except urllib.error.HTTPError as e:
        assert e.code == 401
    m = metrics(url)
    assert ("ferry_containers", (("state", "idle"),)) in m


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_doctor_checks_the_host(tmp_path):
    from conftest import ferry_bin

    out = subprocess.run([ferry_bin(), "doctor", "--data-dir", str(tmp_path / "d"), "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    for name in ("overlayfs", "cgroups", "debootstrap", "disk space", "data dir", "modal client"):
        assert re.search(rf"^(ok  |warn|FAIL) {name}", out.stdout, re.M), text
    # Every failed check says how to fix it, and failures make the exit status non-zero.
    failed = re.findall(r"^FAIL .*\n     fix: .+", out.stdout, re.M)
    assert len(failed) == out.stdout.count("\nFAIL ") + out.stdout.startswith("FAIL ")
    assert (out.returncode == 0) == (not failed), text
