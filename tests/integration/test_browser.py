"""The web page in a real browser (headless Chromium) on the session's real service.

One browser for the module, one user of its own (``web``), so the page lists only this
module's jobs. Each test opens the page afresh; waits are generous bounds, not timings.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from browser import start_browser, stop_browser
from kotta_testing import wait_for

from kotta import KottaJob

WAIT_S = 30


@pytest.fixture(scope="module")
def web_user(service, tmp_path_factory):
    """Credentials (path) of a user only this module uses."""
    path = tmp_path_factory.mktemp("web") / "web.auth"
    return service.token(f"web-{uuid.uuid4().hex[:6]}", path)


@pytest.fixture(scope="module")
def wkonn(service, web_user):
    return service.konn(web_user)


@pytest.fixture(scope="module")
def token(web_user):
    return json.loads(web_user.read_text())["token"]


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(chromium, downloads):
    driver = start_browser(downloads)
    yield driver
    stop_browser(driver)


class Page:
    """The page in the browser, opened at a fragment, with the token of ``token``."""

    def __init__(self, driver, url: str):
        self.d, self.url = driver, url

    def open(self, fragment: str = "", token: str | None = None) -> Page:
        # A fresh tab state: no token kept from an earlier test.
        self.d.get(self.url + "/static/style.css")
        self.d.execute_script("sessionStorage.clear()")
        if token is not None:
            fragment = f"token={token}" + (f"&{fragment}" if fragment else "")
        self.d.get(f"{self.url}/#{fragment}" if fragment else self.url + "/")
        return self

    def js(self, script: str, *args):
        return self.d.execute_script(script, *args)

    def until(self, predicate, what: str, timeout: float = WAIT_S):
        return wait_for(predicate, timeout, what, interval=0.2)

    def text(self, css: str) -> str:
        return (
            self.js(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                css,
            )
            or ""
        )

    def visible(self, css: str) -> bool:
        return bool(
            self.js(
                "const e = document.querySelector(arguments[0]); return !!e && !e.closest('[hidden]');",
                css,
            )
        )

    def click(self, css: str) -> None:
        self.until(lambda: self.visible(css), f"{css} to show")
        self.d.find_element("css selector", css).click()

    def rows(self) -> list[str]:
        """The ids of the jobs the list shows."""
        return self.js(
            "return [...document.querySelectorAll('#jobs tbody tr[data-id]')].map(r => r.dataset.id)"
        )


@pytest.fixture
def page(browser, service):
    return Page(browser, service.url)


def script(wkonn, text: str, name: str = "web", **kw) -> KottaJob:
    job = KottaJob(jobtype="script", script=text, jobname=name, walltime=2, **kw)
    assert job.submit(wkonn)
    return job


def ended(wkonn, job: KottaJob) -> KottaJob:
    assert job.wait(wkonn, maxwait=60), job.info
    return job


def test_without_a_token_the_page_says_how_to_give_one(page):
    page.open()
    page.until(lambda: page.visible("#login"), "the login box")
    assert f"{page.url}/#token=" in page.text("#login-msg") and "auth.file" in page.text(
        "#login-msg"
    )
    assert not page.visible("#app")


def test_a_rejected_token_is_said_and_leaves_the_address_bar(page):
    page.open(token="not-a-token")
    page.until(lambda: "rejected" in page.text("#login-msg"), "the rejection")
    assert "#token=" in page.text("#login-msg")
    assert "not-a-token" not in page.d.current_url


def test_login_by_fragment_lists_my_jobs_and_drops_the_token(page, wkonn, token, web_user):
    job = ended(wkonn, script(wkonn, "echo listed", name="listed"))
    page.open(token=token)
    page.until(lambda: job.job_id in page.rows(), "the job in the list")
    assert token not in page.d.current_url, "the token stays in the address bar"
    assert json.loads(web_user.read_text()).get("url") is not None
    assert wkonn.user["name"] in page.text("#who")
    # A reload keeps the login (this tab's sessionStorage), with no token in the URL.
    page.d.refresh()
    page.until(lambda: job.job_id in page.rows(), "the job after a reload")


def test_a_job_opens_by_route_with_its_detail_on_top_and_one_traceback(page, wkonn, token):
    from kotta.kotta_functions import kottajob

    @kottajob(wkonn, "Test", 0.5, block=False)
    def fails():
        def inner():
            raise KeyError("web-missing-key")

        inner()

    job = fails()
    job.wait(wkonn, maxwait=60)
    page.open(f"job={job.job_id}", token=token)
    page.until(lambda: page.text("#job-status") == "failed", "the failed status")
    top = page.js(
        "return [document.querySelector('#detail').getBoundingClientRect().top, document.querySelector('#jobs').getBoundingClientRect().top]"
    )
    assert top[0] < top[1], "the detail is above the list"
    assert job.job_id in page.text("#detail h2")
    page.until(lambda: job.job_id in page.rows(), "the list")
    assert page.js("return document.querySelector('#jobs tr.selected').dataset.id") == job.job_id
    # Its stderr holds the traceback too: the page shows it once, above the logs.
    page.until(lambda: "traceback is shown above" in page.text("#detail"), "the stderr log")
    body = page.text("body")
    assert "web-missing-key" in page.text("#traceback") and "in inner" in page.text("#traceback")
    assert body.count("Traceback (most recent call last)") == 1, body
    assert page.js("return document.querySelectorAll('pre.traceback').length") == 1


def test_another_users_job_is_not_found(page, konn, token):
    theirs = KottaJob(jobtype="script", script="true", walltime=1)
    theirs.submit(konn)
    page.open(f"job={theirs.job_id}", token=token)
    page.until(lambda: "not yours" in page.text("#detail"), "the not-found message")
    assert not page.visible("#cancel")


def test_the_log_grows_while_the_job_runs(page, wkonn, token):
    job = script(
        wkonn, "for i in $(seq 1 30); do echo line-$i; sleep 0.25; done; echo done-$((6*7))"
    )
    page.open(f"job={job.job_id}", token=token)
    # What the page shows, each time seen before the job was seen to have ended.
    while_running: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shown = page.text("#log-stdout")
        if job.status(wkonn) in ("completed", "failed", "cancelled"):
            break
        if "line-" in shown:
            while_running.add(len(shown))
        time.sleep(0.2)
    assert len(while_running) >= 2, f"the log did not grow while the job ran: {while_running}"
    page.until(lambda: "done-42" in page.text("#log-stdout"), "the last line")
    lines = page.text("#log-stdout").split()
    assert lines == [f"line-{i}" for i in range(1, 31)] + ["done-42"], "each line once, in order"


def test_a_long_log_shows_its_end(page, wkonn, token):
    job = ended(wkonn, script(wkonn, "seq 1 200000"))  # 1.3 MB
    page.open(f"job={job.job_id}", token=token)
    page.until(lambda: page.text("#log-stdout").endswith("\n200000\n"), "the log's last line")
    shown = page.text("#log-stdout")
    assert len(shown) <= 256 * 1024 and not shown.startswith("1\n2\n")
    assert "not shown here" in page.text("#detail")
    # Only the end travelled: the page did not fetch the whole log to cut it itself.
    sizes = page.js(
        "return performance.getEntriesByType('resource')"
        ".filter(e => e.name.includes('/logs/stdout')).map(e => e.encodedBodySize)"
    )
    assert sizes and max(sizes) <= 256 * 1024, sizes


def test_an_output_downloads_through_its_link(page, wkonn, token, downloads):
    data = f"payload-{uuid.uuid4().hex}\n" * 1000
    job = ended(wkonn, script(wkonn, f"printf '%s' '{data}' > result.dat", outputs="result.dat"))
    page.open(f"job={job.job_id}", token=token)
    link = '#outputs a[data-name="result.dat"]'
    page.until(lambda: page.visible(link), "the output's link")
    href = page.js("return document.querySelector(arguments[0]).href", link)
    assert token not in href and href.startswith("http"), href  # a link, not the page's fallback
    page.click(link)
    target = downloads / "result.dat"
    page.until(lambda: target.exists() and target.read_text() == data, "the downloaded file")


def test_a_running_job_is_cancelled_from_the_page(page, wkonn, token):
    job = script(wkonn, "sleep 120")
    wait_for(lambda: job.status(wkonn) == "processing", 60, "the job to run")
    page.open(f"job={job.job_id}", token=token)
    # The queue's load counts it among the busy slots (of all users).
    busy = f'#queues tr[data-queue="{wkonn.job(job.job_id)["queue"]}"] td:nth-child(3)'
    page.until(lambda: page.text(busy).isdigit() and int(page.text(busy)) >= 1, "a busy slot")
    page.click("#cancel")
    wait_for(lambda: job.status(wkonn) == "cancelled", WAIT_S, "the job to be cancelled")
    page.until(lambda: page.text("#job-status") == "cancelled", "the page to say so")
    assert "null" not in page.text("#detail") and "undefined" not in page.text("#detail")
    assert not page.visible("#cancel")


def test_an_ended_job_is_resubmitted_from_the_page(page, wkonn, token):
    job = ended(wkonn, script(wkonn, "echo again", name="again"))
    page.open(f"job={job.job_id}", token=token)
    page.click("#resubmit")
    page.until(
        lambda: "job=" in page.d.current_url and job.job_id not in page.d.current_url,
        "the new job's route",
    )
    new = page.d.current_url.rsplit("job=", 1)[1]
    page.until(
        lambda: new in page.text("#detail h2") and job.job_id in page.text("#detail dl"),
        "its detail",
    )
    assert wkonn.job(new)["resubmit_of"] == job.job_id


def test_the_list_filters_pages_and_counts(page, wkonn, token):
    tag = uuid.uuid4().hex[:6]
    jobs = wkonn.submit_many(
        [
            KottaJob(jobtype="script", script="true", jobname=f"pg-{tag}-{i}", walltime=1)
            for i in range(12)
        ]
    )
    odd = script(wkonn, "exit 3", name=f"odd-{tag}")
    for j in [*jobs, odd]:
        ended(wkonn, j)
    page.open(token=token)
    page.until(lambda: page.visible("#jobs"), "the list")
    page.js(
        "const s = document.querySelector('#f-limit'); s.value = '10'; s.dispatchEvent(new Event('change'))"
    )
    name = page.d.find_element("css selector", "#f-name")
    name.send_keys(f"pg-{tag}")
    newest = [j.job_id for j in reversed(jobs)]
    page.until(lambda: page.rows() == newest[:10], "the first page of 10")
    page.click("#older")
    page.until(lambda: page.rows() == newest[10:], "the second page")
    page.click("#newer")
    page.until(lambda: page.rows() == newest[:10], "the first page again")
    name.clear()
    name.send_keys(f"odd-{tag}")
    page.until(lambda: page.rows() == [odd.job_id], "the name filter")
    page.js(
        "const s = document.querySelector('#f-status'); s.value = 'completed'; s.dispatchEvent(new Event('change'))"
    )
    page.until(lambda: page.rows() == [], "status and name together")
    # Counts per status, for this user's jobs: one click filters by it.
    page.until(lambda: page.visible('#counts button[data-status="failed"]'), "the counts")
    assert page.text('#counts button[data-status="failed"]').split()[-1] == str(
        wkonn_count(wkonn, "failed")
    )
    # Queue load: each queue with its slots.
    assert page.js(
        "return [...document.querySelectorAll('#queues tr[data-queue]')].map(r => r.dataset.queue)"
    ) == list(wkonn.queues())
    assert not page.visible("#dashboard"), "no dashboard link where the server knows none"


def wkonn_count(wkonn, status: str) -> int:
    return len(wkonn.jobs(limit=10_000, status=status))


def test_a_job_name_or_log_that_looks_like_html_stays_text(page, wkonn, token):
    evil = '<img src=x onerror="window.__xss=1">'
    job = ended(
        wkonn,
        script(
            wkonn,
            "echo '<script>window.__xss=2</script><img src=y onerror=window.__xss=3>'",
            name=evil,
        ),
    )
    page.open(f"job={job.job_id}", token=token)
    page.until(lambda: job.job_id in page.rows(), "the list")
    page.until(lambda: "<script>" in page.text("#log-stdout"), "the log as text")
    time.sleep(0.5)  # an image's error handler would have run by now
    assert page.js("return window.__xss === undefined")
    assert page.text(f'#jobs tr[data-id="{job.job_id}"] td:nth-child(2)') == evil
    assert evil in page.text("#detail h2")
    assert page.js("return document.querySelectorAll('img').length") == 0


def test_refreshing_stops_while_the_tab_is_hidden(page, wkonn, token):
    job = script(wkonn, "sleep 30")  # a job whose log the page would keep asking for
    page.open(f"job={job.job_id}", token=token)
    page.until(lambda: page.text("#updated"), "a first refresh")
    page.js(
        "performance.setResourceTimingBufferSize(100000); window.__seen = [];"
        "document.addEventListener('visibilitychange',"
        " () => window.__seen.push([document.hidden, performance.now()]))"
    )
    first = page.d.current_window_handle
    page.d.switch_to.new_window("tab")  # the page's tab goes to the background
    try:
        time.sleep(8)  # more than two refresh periods and eight log polls
    finally:
        page.d.close()
        page.d.switch_to.window(first)
    seen = page.js("return window.__seen")
    assert seen and seen[0][0] is True, f"the page's tab was not hidden: {seen}"
    hidden_at = seen[0][1]
    shown_at = next((t for hidden, t in seen[1:] if not hidden), hidden_at + 7000)
    assert shown_at - hidden_at > 6000, seen
    asked = page.js(
        "return performance.getEntriesByType('resource').filter(e => e.startTime > arguments[0]"
        " && e.startTime < arguments[1] && e.name.includes('/api/')).map(e => e.name)",
        hidden_at + 100,  # a request already on its way when the tab was hidden
        shown_at - 500,  # the page's own listener ran first: it refreshes once visible again
    )
    everything = page.js(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/')).map(e => [e.name.slice(-30), Math.round(e.startTime)])"
    )
    assert asked == [], f"the hidden page kept asking: {asked} {seen} {everything}"
    wkonn.cancel_job(job.job_id)
