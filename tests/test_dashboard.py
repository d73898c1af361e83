"""The web dashboard (issue 14) in a real headless Chromium (Debian's `chromium`, driven by
Playwright for Python) against a real `tailor serve`, `tailor worker` (a tiny random Llama
trains in seconds), `tailor eval-worker` and, for the playground, `tailor inference` (vLLM
serving SmolLM2-135M-Instruct, started once at the beginning so it boots while the other
tests run).

Every page is screenshotted into test-output/dashboard/ (git-ignored). Each test fails on a
script error or a Content-Security-Policy violation in the page.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import fresh_database_url
from tiny_model import build_tiny_llama, chat, chat_file

from service.cli.devservers import (
    REPO_ROOT,
    TailorEvalWorker,
    TailorServer,
    TailorWorker,
    free_port,
    running_inference,
    running_server,
)

TINY = "tiny-llama"
SMOL = "SmolLM2-135M-Instruct"
STATIC = REPO_ROOT / "service" / "api" / "dashboard" / "static"
SHOTS = REPO_ROOT / "test-output" / "dashboard"
XSS = "<img src=x onerror=alert(1)>"


# --- static checks (no browser) ---------------------------------------------------------


def test_static_files_set_no_inline_script_style_or_html() -> None:
    """What the CSP forbids is also absent from the source: no inline <script> or style
    attribute in the page, and no script writes HTML or a style attribute."""
    index = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", index), "inline script in index.html"
    assert "style=" not in index and "<style" not in index
    for path in (STATIC / "js").rglob("*.js"):
        text = path.read_text()
        for forbidden in (
            r"\.(inner|outer)HTML\b",
            r"insertAdjacentHTML\(",
            r"document\.write",
            r"setAttribute\(\s*[\"']style",
            r"\beval\(",
            r"new Function",
        ):
            assert not re.search(forbidden, text), f"{path.name} matches {forbidden}"
    vendored = (STATIC / "vendor" / "VENDORED.md").read_text()
    assert "uPlot" in vendored and "1.6.32" in vendored and "MIT" in vendored


def test_dashboard_is_served_with_a_strict_csp(server: TailorServer, key_a: str) -> None:
    with httpx.Client(base_url=server.root_url, timeout=30) as http:
        page = http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        for directive in (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ):
            assert directive in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
        script = http.get("/ui/js/app.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert script.headers["content-security-policy"] == csp
        assert http.get("/ui/js/app.js", headers={"if-none-match": script.headers["etag"]}).status_code == 304
        for missing in ("/ui/nope.js", "/ui/../pyproject.toml", "/ui/%2e%2e/app.py"):
            assert http.get(missing).status_code == 404, missing
        # The API is unchanged: unknown /v1 paths answer the OpenAI envelope, and / takes no key.
        unknown = http.get("/v1/nope", headers={"Authorization": f"Bearer {key_a}"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"
        assert "content-security-policy" not in unknown.headers
        me = http.get("/v1/me", headers={"Authorization": f"Bearer {key_a}"})
        assert me.status_code == 200 and me.json() == {
            "object": "me",
            "project": {"id": me.json()["project"]["id"], "name": "alpha"},
            "admin": False,
        }
        assert http.get("/v1/me").status_code == 401


# --- the stack and the browser ----------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, Any]]:
    """A server, a training worker, an eval worker and (booting in the background) vLLM for
    SmolLM2, on a database of their own; the base models are SmolLM2 and a tiny Llama."""
    root = tmp_path_factory.mktemp("dashboard")
    model_dir = build_tiny_llama(root / "tiny-llama", hidden=64, layers=2)
    models_file = root / "models.json"
    models_file.write_text(json.dumps([{"name": TINY, "source": "hf_dir", "location": str(model_dir), "context_length": 256}]))
    tag = uuid.uuid4().hex[:8]
    with fresh_database_url(root / "db") as db_url:
        env = {
            "TAILOR_DATABASE_URL": db_url,
            "TAILOR_REDIS_URL": redis_url,
            "TAILOR_QUEUE_NAME": f"tailor:test-dashboard:{tag}",
            "TAILOR_EVAL_QUEUE_NAME": f"tailor:test-dashboard-evals:{tag}",
            "TAILOR_STORAGE_URL": (root / "objects").resolve().as_uri(),
            "TAILOR_BASE_MODELS_FILE": str(models_file),
            "TAILOR_DEVICE": "cpu",
            "TAILOR_MODEL_CACHE_DIR": os.environ.get(
                "TAILOR_TEST_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "tailor" / "models")
            ),
            "TAILOR_INFERENCE_PORT": str(free_port()),
            "TAILOR_INFERENCE_TIMEOUT_SECONDS": "120",
            "TAILOR_VLLM_KV_CACHE_BYTES": str(512 * 1024**2),
            "TAILOR_EVALUATION_WAIT_SECONDS": "0",
            "TAILOR_WORKER_METRICS_PORT": str(free_port()),
        }
        inference_env = {**env, "TAILOR_INFERENCE_MODELS": json.dumps([SMOL])}
        with running_inference(inference_env, root / "inference") as inference, running_server(env, root / "server") as server:
            worker = TailorWorker(env, root / "worker", "worker")
            evals = TailorEvalWorker({**env, "TAILOR_WORKER_METRICS_PORT": str(free_port())}, root / "eval-worker", "evals")
            key = server.create_key("dashboard")
            client = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)
            try:
                yield {"server": server, "worker": worker, "evals": evals, "inference": inference, "key": key, "client": client}
            finally:
                client.close()
                worker.stop()
                evals.stop()


@pytest.fixture(scope="module")
def browser(stack: dict[str, Any]) -> Iterator[Any]:
    """Headless Chromium. It needs the stack first: Playwright's sync API keeps an event loop
    running in this thread while it is open, where the stack's set-up and tear-down
    (`asyncio.run`, for a PostgreSQL database of its own) could not run."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not on PATH: run `make setup` (it installs Debian's chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


class Page:
    """A browser tab on the dashboard that records dialogs, script errors and CSP violations."""

    def __init__(self, browser: Any, base_url: str, **context_args: Any):
        self.context = browser.new_context(
            base_url=base_url, viewport={"width": 1280, "height": 860}, accept_downloads=True, **context_args
        )
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", self._console)
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        # CSP violations are reported as events in the page; the init script runs before
        # the page's own (Playwright injects it; it is not inline script the CSP sees).
        self.page.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));"
        )

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        if dialog.type == "confirm":
            dialog.accept()
        else:
            dialog.dismiss()

    def _console(self, message: Any) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(f"console: {message.text}")

    def sign_in(self, key: str) -> None:
        self.page.goto("/")
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.get_by_test_id("project-name").wait_for()

    def shot(self, name: str, full_page: bool = True) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.evaluate("window.scrollTo(0, 0)")  # the sticky top bar stays on top of a full-page shot
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)

    def close(self) -> None:
        self.context.close()

    def check_clean(self, key: str) -> None:
        assert not self.errors, self.errors
        assert not [u for u in self.requests if key in u], "the key must never be in a URL"


@pytest.fixture
def tab(browser: Any, stack: dict[str, Any]) -> Iterator[Page]:
    page = Page(browser, stack["server"].root_url)
    page.page.context.set_default_timeout(20_000)
    try:
        page.sign_in(stack["key"])
        yield page
        page.check_clean(stack["key"])
    finally:
        page.close()


def wait_for(check: Any, timeout: float, what: str, *logs: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(log.log_tail() for log in logs))


def upload(client: openai.OpenAI, data: bytes, name: str = "train.jsonl", purpose: str = "fine-tune") -> str:
    return client.files.create(file=(name, data), purpose=purpose).id  # type: ignore[arg-type]


# --- the browser tests ------------------------------------------------------------------


@pytest.mark.slow
def test_sign_in_shows_the_project_and_sign_out_forgets_the_key(browser: Any, stack: dict[str, Any]) -> None:
    tab = Page(browser, stack["server"].root_url)
    try:
        page = tab.page
        page.goto("/")
        tab.shot("01-sign-in")
        page.get_by_label("API key").fill("sk-tailor-wrong")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("alert").filter(has_text="Incorrect API key").wait_for()
        assert page.evaluate("sessionStorage.length") == 0
        tab.sign_in(stack["key"])
        assert page.get_by_test_id("project-name").inner_text() == "dashboard"
        assert page.evaluate("sessionStorage.getItem('tailor.api_key')") == stack["key"]
        assert page.evaluate("localStorage.length") == 0 and stack["key"] not in page.url
        page.reload()  # the key outlives a reload of the tab, not the tab
        page.get_by_test_id("project-name").wait_for()
        page.get_by_role("button", name="Sign out").click()
        page.get_by_label("API key").wait_for()
        assert page.evaluate("sessionStorage.length") == 0
        # `tab.errors` holds the console line of the wrong key's 401; nothing else may be there.
        assert all("401" in e for e in tab.errors), tab.errors
        assert not [u for u in tab.requests if stack["key"] in u]
    finally:
        tab.close()


def _drop(page: Any, name: str, text: str) -> None:
    """Drop a file on the upload zone, as a user dragging it from the desktop does."""
    page.locator(".dropzone").evaluate(
        """(zone, [name, text]) => {
            const data = new DataTransfer();
            data.items.add(new File([text], name, {type: "application/jsonl"}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
        }""",
        [name, text],
    )


@pytest.mark.slow
def test_files_upload_by_picker_and_drop_preview_bad_line_and_delete(tab: Page, stack: dict[str, Any]) -> None:
    page = tab.page
    page.get_by_role("link", name="Files").click()
    page.get_by_role("heading", name="Your files").wait_for()
    # The picker opens from the mouse and from the keyboard (focus the drop zone, Enter).
    # Whether headless Chromium then shows a chooser is its own business (it sometimes
    # declines); what the page does is click its file input, which is checked here.
    page.locator("input[type=file]").evaluate(
        "i => { window.picked = 0; i.addEventListener('click', e => { window.picked += 1; e.preventDefault(); }); }"
    )
    page.locator(".dropzone").click()
    page.locator(".dropzone").focus()
    page.keyboard.press("Enter")
    page.keyboard.press(" ")
    assert page.evaluate("window.picked") == 3
    # A file chosen in the picker is uploaded at once, with its progress.
    page.locator("input[type=file]").set_input_files(
        files=[{"name": "train.jsonl", "mimeType": "application/jsonl", "buffer": chat_file(24)}]
    )
    page.get_by_text("Uploaded train.jsonl as file-").wait_for()
    assert page.locator("progress").evaluate("p => p.value") == 100
    row = page.locator("tr", has_text="train.jsonl")
    assert "fine-tune" in row.inner_text()

    # A bad file is refused at upload; the message names its line.
    lines = [json.dumps(chat("q", "a"))] * 5
    lines[2] = '{"messages": [ broken'
    _drop(page, "broken.jsonl", "\n".join(lines) + "\n")
    error = page.locator(".upload-error [role=alert]")
    error.wait_for()
    assert re.search(r"[Ll]ine 3", error.inner_text()), error.inner_text()
    tab.shot("03-files-bad-line")
    assert page.locator("tr", has_text="broken.jsonl").count() == 0

    # A file over 8 MB goes through the Uploads API, part by part, with progress.
    big = chat_file(1)
    big_data = big * (9 * 1024 * 1024 // len(big) + 1)
    _drop(page, "big.jsonl", big_data.decode())
    page.get_by_text("Uploaded big.jsonl as file-").wait_for(timeout=60_000)
    uploads = [u for u in tab.requests if "/v1/uploads" in u]
    assert sum(u.endswith("/parts") for u in uploads) == 2 and any(u.endswith("/complete") for u in uploads), uploads
    assert "9.0 MB" in page.locator("tr", has_text="big.jsonl").inner_text()

    # The preview draws the first examples as chat turns.
    page.get_by_role("button", name="Preview train.jsonl").click()
    page.get_by_role("heading", name=re.compile("Preview")).wait_for()
    assert page.locator(".preview .example").count() == 5
    first = page.locator(".preview .example").first
    assert first.locator(".turn.role-user").count() == 1 and "paris" in first.locator(".turn.role-assistant").inner_text()
    tab.shot("02-files")

    page.get_by_role("button", name="Delete big.jsonl").click()
    page.locator("tr", has_text="big.jsonl").wait_for(state="detached")
    assert any(d.startswith("confirm:") for d in tab.dialogs)
    assert page.locator("tr", has_text="train.jsonl").count() == 1


@pytest.mark.slow
def test_a_user_string_with_markup_renders_as_text(tab: Page, stack: dict[str, Any]) -> None:
    """A file, an eval and a run named `<img src=x onerror=alert(1)>` show that very text;
    no element is made from it, no dialog opens and no script runs."""
    client = stack["client"]
    upload(client, chat_file(10), name=XSS)
    ev = client.evals.create(
        name=XSS,
        data_source_config={
            "type": "custom",
            "item_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
            "include_sample_schema": True,
        },
        testing_criteria=[
            {"type": "string_check", "name": XSS, "input": "{{sample.output_text}}", "reference": "x", "operation": "eq"}
        ],
    )
    page = tab.page
    page.get_by_role("link", name="Files").click()
    cell = page.locator("td.filename", has_text=XSS)
    cell.wait_for()
    assert cell.inner_text() == XSS
    page.get_by_role("link", name="Evaluations").click()
    page.get_by_role("link", name=XSS).click()
    page.get_by_role("heading", name=XSS).wait_for()
    tab.shot("08-xss-as-text")
    assert page.locator("#app img").count() == 0
    assert not tab.dialogs, tab.dialogs
    client.evals.delete(ev.id)


def _set_field(page: Any, label: str, value: str) -> None:
    page.get_by_label(label, exact=True).fill(value)


@pytest.mark.slow
def test_new_job_form_then_the_loss_curve_gains_points_while_it_trains(tab: Page, stack: dict[str, Any]) -> None:
    client = stack["client"]
    # 100 examples, 3 epochs, batch 1: 300 steps, ten seconds or more on the tiny model.
    train_id = upload(client, chat_file(100), "curve-train.jsonl")
    valid_id = upload(client, chat_file(12), "curve-valid.jsonl")
    page = tab.page
    page.get_by_role("link", name="Jobs").click()
    page.get_by_role("link", name="New job").click()
    page.get_by_label("Base model").select_option(TINY)
    page.get_by_label("Training file").select_option(train_id)
    page.get_by_label("Validation file").select_option(valid_id)
    _set_field(page, "Suffix", "curve")
    assert page.get_by_label("Batch Size", exact=True).get_attribute("placeholder") == "auto"
    _set_field(page, "N Epochs", "3")
    _set_field(page, "Batch Size", "1")
    _set_field(page, "Rank", "8")
    page.get_by_label("Test file").select_option(valid_id)  # measured against its base once it succeeds
    # The extensions the API documents are offered: the job's evaluation, the training options
    # with early stopping (off here, so the job runs its three epochs).
    assert page.get_by_label("Test file").count() == 1 and page.locator("fieldset[data-extension=training]").count() == 1
    assert page.get_by_label("Early Stopping Patience").get_attribute("placeholder") == "auto"
    _set_field(page, "Early Stopping Patience", "0")
    tab.shot("04-new-job")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(re.compile(r"#/jobs/ftjob-"))
    job_id = page.url.rsplit("/", 1)[-1]
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.model == TINY and job.user_provided_suffix == "curve" and job.validation_file
    assert job.model_extra["training"]["early_stopping_patience"] == 0 and job.model_extra["lora"]["rank"] == 8

    chart = page.get_by_test_id("loss-chart")
    counts: list[int] = []

    def more_points() -> bool:
        n = int(chart.get_attribute("data-points") or 0)
        if not counts or n != counts[-1]:
            counts.append(n)
        return len([c for c in counts if c > 0]) >= 3

    wait_for(more_points, 120, "the loss curve to gain points", stack["worker"])
    tab.shot("05-job-training")
    assert page.locator("canvas").count() >= 1  # drawn, without reloading the page
    page.locator(".badge[data-status=succeeded]").first.wait_for(timeout=300_000)
    done = client.fine_tuning.jobs.retrieve(job_id)
    steps = {e.data["step"] for e in client.fine_tuning.jobs.list_events(job_id, limit=1000).data if e.type == "metrics"}
    # Polled from here: wait_for_function evaluates with eval in the page, which the CSP refuses.
    wait_for(lambda: chart.get_attribute("data-points") == str(len(steps)), 30, "every step on the curve", stack["worker"])
    assert counts == sorted(counts) and len(set(counts)) >= 3, counts  # it grew while the job ran
    full = [e.data for e in client.fine_tuning.jobs.list_events(job_id, limit=1000).data if "full_valid_loss" in e.data]
    assert full, "a full-validation point per epoch"
    # Resolved hyperparameters, trained tokens, checkpoints with their metrics and "try it".
    hyper = done.method.supervised.hyperparameters
    assert page.locator("[data-hyper=n_epochs]").inner_text() == "3"
    assert page.locator("[data-hyper=learning_rate_multiplier]").inner_text() not in ("auto", "")
    assert hyper.learning_rate_multiplier != "auto"
    assert page.get_by_test_id("trained-tokens").inner_text().replace(",", "") == str(done.trained_tokens)
    rows = page.locator(".checkpoints tr[data-step]")
    assert rows.count() == 3
    assert page.locator(".checkpoints a", has_text="Try it").first.get_attribute("href").startswith("#/playground?left=")
    assert page.locator(".events li", has_text="The job has successfully completed").count() == 1
    assert page.locator("[data-action]").count() == 0  # a finished job offers no action
    # Its evaluation: no vLLM serves the tiny base, so the eval worker skips it and says why.
    page.locator(".evaluation .badge[data-status=skipped]").wait_for(timeout=60_000)
    assert "no inference server" in page.locator(".evaluation").inner_text()
    assert client.fine_tuning.jobs.retrieve(job_id).model_extra["evaluation"]["status"] == "skipped"
    tab.shot("06-job-succeeded")
    stack["tuned"] = done.fine_tuned_model


@pytest.mark.slow
def test_pause_resume_and_cancel_follow_the_api_rules_from_the_job_page(tab: Page, stack: dict[str, Any]) -> None:
    client = stack["client"]
    job = client.fine_tuning.jobs.create(
        model=TINY,
        training_file=upload(client, chat_file(40), "long.jsonl"),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 30, "batch_size": 1}}},
    )
    page = tab.page
    page.goto(f"/#/jobs/{job.id}")
    page.locator("h1 + .badge[data-status=running]").wait_for(timeout=90_000)
    actions = page.locator("[data-action]")
    assert sorted(actions.evaluate_all("bs => bs.map(b => b.dataset.action)")) == ["cancel", "pause"]
    page.get_by_role("button", name="Pause").click()
    page.locator("h1 + .badge[data-status=paused]").wait_for()
    assert sorted(actions.evaluate_all("bs => bs.map(b => b.dataset.action)")) == ["cancel", "resume"]
    tab.shot("07-job-paused")
    page.get_by_role("button", name="Cancel").click()
    page.locator("h1 + .badge[data-status=cancelled]").wait_for()
    assert actions.count() == 0
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    page.locator(".events li", has_text="Fine-tuning job cancelled").wait_for()

    # The jobs list: badges, and the filter by status.
    page.get_by_role("link", name="Jobs").click()
    page.locator(f"tr[data-job-id='{job.id}'] .badge[data-status=cancelled]").wait_for()
    page.get_by_label("Filter by status").select_option("cancelled")
    page.wait_for_url(re.compile(r"status=cancelled"))
    page.locator(f"tr[data-job-id='{job.id}']").wait_for()
    statuses = page.locator("tbody tr").evaluate_all("rs => rs.map(r => r.dataset.status)")
    assert statuses and set(statuses) == {"cancelled"}
    page.get_by_label("Filter by status").select_option("")
    page.locator("tr[data-status=succeeded]").first.wait_for()
    tab.shot("09-jobs")


ROWS = [
    {"item": {"ticket": "My card was charged twice", "label": "billing"}, "sample": {"output_text": "billing"}},
    {"item": {"ticket": "The app crashes on start", "label": "bug"}, "sample": {"output_text": "bug"}},
    {"item": {"ticket": "How do I export my data?", "label": "question"}, "sample": {"output_text": "billing"}},
]
OTHER = [
    {"item": ROWS[0]["item"], "sample": {"output_text": "billing"}},
    {"item": ROWS[1]["item"], "sample": {"output_text": "a bug"}},
    {"item": ROWS[2]["item"], "sample": {"output_text": "question"}},
]


@pytest.mark.slow
def test_an_evaluation_comparison_shows_pass_rates_and_the_items_that_differ(tab: Page, stack: dict[str, Any]) -> None:
    client = stack["client"]
    schema = {
        "type": "object",
        "properties": {"ticket": {"type": "string"}, "label": {"type": "string"}},
        "required": ["ticket", "label"],
    }
    ev = client.evals.create(
        name="triage",
        data_source_config={"type": "custom", "item_schema": schema, "include_sample_schema": True},
        testing_criteria=[
            {
                "type": "string_check",
                "name": "exact label",
                "input": "{{sample.output_text}}",
                "reference": "{{item.label}}",
                "operation": "eq",
            },
            {
                "type": "string_check",
                "name": "mentions label",
                "input": "{{sample.output_text}}",
                "reference": "{{item.label}}",
                "operation": "ilike",
            },
        ],
    )
    runs = [
        client.evals.runs.create(
            ev.id, name=name, data_source={"type": "jsonl", "source": {"type": "file_content", "content": rows}}
        )
        for name, rows in (("first", ROWS), ("second", OTHER))
    ]
    for run in runs:
        wait_for(
            lambda r=run: client.evals.runs.retrieve(r.id, eval_id=ev.id).status == "completed", 60, "the run", stack["evals"]
        )
    page = tab.page
    page.get_by_role("link", name="Evaluations").click()
    page.get_by_role("link", name="triage").click()
    for run in runs:
        page.locator(f"tr[data-run-id='{run.id}'] input[type=checkbox]").check()
    page.get_by_role("button", name="Compare the two selected runs").click()
    page.get_by_role("heading", name="Compare runs").wait_for()
    exact = page.locator("tr[data-criterion='exact label'] td")
    assert exact.all_inner_texts() == ["67% (2/3)", "67% (2/3)"]
    mentions = page.locator("tr[data-criterion='mentions label'] td")
    assert mentions.all_inner_texts() == ["67% (2/3)", "100% (3/3)"]
    diffs = page.locator("article.diff")
    assert diffs.count() == 2  # item 1: bug vs "a bug"; item 2: billing vs question
    item2 = page.locator("article.diff[data-item='2']")
    outputs = item2.locator("pre.output").all_inner_texts()
    assert outputs == ["billing", "question"]
    assert "How do I export my data?" in item2.locator("pre.prompt").inner_text()
    tab.shot("10-eval-compare")


@pytest.mark.slow
def test_models_download_weights_and_delete(tab: Page, stack: dict[str, Any]) -> None:
    tuned = stack.get("tuned")
    if tuned is None:
        pytest.skip("needs the model trained by the job test")
    page = tab.page
    page.get_by_role("link", name="Models").click()
    row = page.locator("tr", has=page.locator("td", has_text=tuned)).filter(has_text="fine-tuned")
    row.wait_for()
    tab.shot("11-models")
    with page.expect_download() as download:
        row.get_by_role("button", name="Download weights").click()
    path = download.value.path()
    assert download.value.suggested_filename.endswith(".tar.gz") and Path(path).stat().st_size > 1000
    assert Path(path).read_bytes()[:2] == b"\x1f\x8b"  # gzip
    row.get_by_role("button", name="Delete").click()
    row.wait_for(state="detached")
    assert tuned not in {m.id for m in stack["client"].models.list().data}


@pytest.mark.slow
def test_phone_width_and_dark_mode(browser: Any, stack: dict[str, Any]) -> None:
    tab = Page(browser, stack["server"].root_url, color_scheme="dark")
    try:
        tab.page.set_viewport_size({"width": 390, "height": 844})
        tab.sign_in(stack["key"])
        tab.page.locator("tbody tr").first.wait_for()
        background = tab.page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(18, 21, 28)", background
        # Nothing is wider than the phone's screen but the tables, which scroll in their box.
        assert tab.page.evaluate("document.documentElement.scrollWidth") <= 390
        tab.shot("12-jobs-phone-dark")
        tab.check_clean(stack["key"])
    finally:
        tab.close()


@pytest.mark.slow
def test_playground_streams_both_panes(tab: Page, stack: dict[str, Any]) -> None:
    """Last: vLLM has booted meanwhile. The same message goes to both panes (the base model
    at two settings would look alike, so both panes differ by model when one is there)."""
    stack["inference"].wait_ready()
    page = tab.page
    page.goto(f"/#/playground?left={SMOL}&right={SMOL}")
    page.get_by_label("Message").fill("Name three colours.")
    _set_field(page, "Max tokens", "24")
    _set_field(page, "Temperature", "0")
    page.get_by_role("button", name="Send to both").click()
    panes = [page.locator(f".transcript[data-pane={side}]") for side in ("A", "B")]
    # Token by token: each pane's answer grows chunk by chunk before the stream ends.
    seen = {0: set(), 1: set()}

    def streamed() -> bool:
        for i, pane in enumerate(panes):
            seen[i].add(len(pane.locator(".turn.role-assistant .content").inner_text()))
        return page.get_by_role("button", name="Send to both").is_enabled() and all(len(s) >= 3 for s in seen.values())

    wait_for(streamed, 180, "both panes to stream", stack["inference"], stack["server"])
    for pane in panes:
        assert int(pane.get_attribute("data-chunks") or 0) >= 3
        assert pane.locator(".turn.role-assistant .content").inner_text().strip()
    assert "tokens" in page.locator(".pane-meta").first.inner_text()
    tab.shot("13-playground")
