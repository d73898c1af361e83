"""The `tailor` command: the composition root, the one package that may import the API,
the trainer and the inference launcher (each lazily, inside its command)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from service.core.logs import setup_logging
from service.core.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

PROJECT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@click.group()
def main() -> None:
    """Tailor: self-hosted fine-tuning that speaks the OpenAI API."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to bind.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    envvar="TAILOR_SERVE_WORKERS",
    help="API processes sharing the port (about one per core); each keeps its own caches and /metrics.",
)
@click.option("--log-level", default="info", show_default=True)
def serve(host: str, port: int, workers: int, log_level: str) -> None:
    """Run the API server (migrations are applied at start)."""
    import os

    import uvicorn

    setup_logging(log_level)
    # log_config=None: uvicorn adds no handlers of its own, so its lines go through the root
    # handler set up above, in the same format. access_log=False: the app writes its own
    # access line, after the response (service/api/middleware.py says why).
    options = {"host": host, "port": port, "log_level": log_level, "log_config": None, "access_log": False}
    if workers == 1:
        from service.api.app import create_app

        uvicorn.run(create_app(get_settings()), timeout_graceful_shutdown=10, **options)  # type: ignore[arg-type]
        return
    settings = get_settings()
    if settings.migrate_on_start:
        from service.core.db import run_migrations

        run_migrations(settings.resolved_database_url)  # once, before the processes race to
    os.environ["TAILOR_MIGRATE_ON_START"] = "false"
    os.environ[_WORKER_LOG_LEVEL] = log_level
    uvicorn.run("service.cli:worker_app", factory=True, workers=workers, **options)  # type: ignore[arg-type]


# How `tailor serve --workers N` tells its processes (started afresh by uvicorn) the log level.
_WORKER_LOG_LEVEL = "_TAILOR_SERVE_LOG_LEVEL"


def worker_app() -> object:
    """The app of one `tailor serve --workers N` process: logging as in the parent, then the app."""
    import os

    from service.api.app import create_app

    setup_logging(os.environ.get(_WORKER_LOG_LEVEL, "info"))
    return create_app(get_settings())


@main.command()
def migrate() -> None:
    """Upgrade the database to the newest schema, then exit (run once per deployment)."""
    from service.core.db import run_migrations

    url = get_settings().resolved_database_url
    run_migrations(url)
    click.echo("database is at the newest revision")


@main.command()
@click.option("--queue", default=None, help="Queue to take jobs from (default: TAILOR_QUEUE_NAME).")
@click.option("--worker-id", default=None, help="Name in job leases (default: host-pid).")
@click.option("--log-level", default="info", show_default=True)
def worker(queue: str | None, worker_id: str | None, log_level: str) -> None:
    """Run a trainer worker: takes fine-tuning jobs from the queue, one at a time."""
    from trainer.worker import run_worker

    setup_logging(log_level)
    run_worker(queue, worker_id)


@main.command("eval-worker")
@click.option("--worker-id", default=None, help="Name in run leases (default: host-pid-evals).")
@click.option("--log-level", default="info", show_default=True)
def eval_worker(worker_id: str | None, log_level: str) -> None:
    """Run an eval worker: executes eval runs and graders/run from the eval queue (no GPU needed)."""
    from service.evals.worker import run_eval_worker

    setup_logging(log_level)
    run_eval_worker(worker_id)


@main.command()
@click.option(
    "--model",
    "models",
    multiple=True,
    help="A base model to serve (repeatable). Default: TAILOR_INFERENCE_MODELS, else every registered one.",
)
@click.option("--log-level", default="info", show_default=True)
def inference(models: tuple[str, ...], log_level: str) -> None:
    """Run one vLLM server per base model; fine-tuned adapters are fetched from the object store on first use."""
    from inference.launcher import run
    from service.core.registry import load_registry

    setup_logging(log_level)
    settings = get_settings()
    sys.exit(run(settings, load_registry(settings.base_models_file), list(models) or None))


@main.command()
@click.option("--grace-seconds", type=float, default=None, help="Spare what is younger (default: TAILOR_JANITOR_GRACE_SECONDS).")
def janitor(grace_seconds: float | None) -> None:
    """Remove expired files and uploads, orphaned objects and stale scratch files once (`tailor serve` does it every few minutes)."""
    from service.api.files.janitor import sweep
    from service.core.storage import open_configured_store

    settings = get_settings()
    store = open_configured_store(settings)
    grace = settings.janitor_grace_seconds if grace_seconds is None else grace_seconds

    async def run(sessionmaker: async_sessionmaker[AsyncSession]) -> str:
        return (await sweep(sessionmaker, store, grace_seconds=grace)).summary()

    click.echo(asyncio.run(_with_sessionmaker(settings, run)))


@main.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--project", required=True, help="Project the key acts for (created on first use).")
@click.option("--admin", is_flag=True, help="The key may also manage the project's sharing (checkpoint permissions).")
def keys_create(project: str, admin: bool) -> None:
    """Create an API key and print it (it is shown only once)."""
    if not PROJECT_NAME.match(project):
        raise click.BadParameter("use 1-64 letters, digits, '_' or '-'", param_hint="--project")
    key = asyncio.run(_create_key(get_settings(), project, admin))
    click.echo(key)


async def _create_key(settings: Settings, project: str, admin: bool = False) -> str:
    from service.api.auth import create_key

    async def create(session: AsyncSession) -> str:
        return (await create_key(session, project, admin))[0]

    return await _with_session(settings, create)


T = TypeVar("T")


def api_options(command: Callable[..., T]) -> Callable[..., T]:
    """`--base-url` and `--api-key`: the commands that work through the public API, as a user's script would."""
    command = click.option("--api-key", envvar="TAILOR_API_KEY", required=True, help="A project key (or set TAILOR_API_KEY).")(
        command
    )
    return click.option("--base-url", envvar="TAILOR_BASE_URL", default="http://127.0.0.1:8000/v1", show_default=True)(command)


async def _with_sessionmaker(settings: Settings, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
    from service.core.db import make_engine, make_sessionmaker, run_migrations_async

    url = settings.resolved_database_url
    await run_migrations_async(url)
    engine = make_engine(url)
    try:
        return await work(make_sessionmaker(engine))
    finally:
        await engine.dispose()


async def _with_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async def in_one_session(sessionmaker: async_sessionmaker[AsyncSession]) -> T:
        async with sessionmaker() as session:
            return await work(session)

    return await _with_sessionmaker(settings, in_one_session)


@keys.command("list")
@click.option("--project", default=None, help="Only this project's keys.")
def keys_list(project: str | None) -> None:
    """List keys: id, project, first characters, created, revoked (never the key itself)."""
    import datetime

    from service.api.auth import list_keys

    def when(ts: int | None) -> str:
        return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"

    rows = asyncio.run(_with_session(get_settings(), lambda session: list_keys(session, project)))
    click.echo(f"{'ID':<32} {'PROJECT':<24} {'KEY':<18} {'ADMIN':<6} {'PROJECT_ID':<30} {'CREATED (UTC)':<20} REVOKED (UTC)")
    for row in rows:
        admin = "yes" if row.admin else "-"
        click.echo(
            f"{row.id:<32} {row.project:<24} {row.shown:<18} {admin:<6} {row.project_id:<30} {when(row.created_at):<20} "
            f"{when(row.revoked_at)}"
        )


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key (by the id `tailor keys list` shows); every API replica stops accepting it at once."""
    from service.api.auth import revoke_key

    _announce_revocation(_on_key(key_id, lambda session: revoke_key(session, key_id)))
    click.echo(f"revoked {key_id}")


@keys.command("rotate")
@click.argument("key_id")
def keys_rotate(key_id: str) -> None:
    """Revoke a key and print a new one for the same project (shown only once)."""
    from service.api.auth import rotate_key

    key, old_hash = _on_key(key_id, lambda session: rotate_key(session, key_id))
    _announce_revocation(old_hash)
    click.echo(key)


def _on_key(key_id: str, work: Callable[[AsyncSession], Awaitable[T | None]]) -> T:
    """`work` on the key with id `key_id`, which returns None when there is no such key."""
    done = asyncio.run(_with_session(get_settings(), work))
    if done is None:
        raise click.ClickException(f"no key with id {key_id} (see `tailor keys list`)")
    return done


def _announce_revocation(key_hash: str) -> None:
    from redis.exceptions import RedisError

    from service.api.revocations import publish_revocations

    try:
        asyncio.run(publish_revocations(get_settings().redis_url, [key_hash]))
    except (RedisError, OSError) as exc:
        click.echo(f"warning: Redis is unavailable ({exc}); API replicas stop accepting the key within 5 s", err=True)


@main.group("import")
def import_() -> None:
    """Bring jobs and files across from another service."""


@import_.command("openai")
@click.option("--source-api-key", envvar="OPENAI_API_KEY", required=True, help="A key of the source (or set OPENAI_API_KEY).")
@click.option("--source-base-url", default="https://api.openai.com/v1", show_default=True, help="The source's API root.")
@click.option(
    "--model-map",
    "model_map",
    multiple=True,
    required=True,
    help="SOURCE_MODEL=BASE_MODEL (repeatable); a key also maps the models whose names it starts.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be imported; change nothing.")
@api_options
def import_openai(
    source_api_key: str, source_base_url: str, model_map: tuple[str, ...], dry_run: bool, base_url: str, api_key: str
) -> None:
    """Recreate the source's fine-tuning jobs (and upload their files) here; a second run skips what is imported."""  # fmt: skip
    import openai

    from service.cli.importer import parse_model_map, plan, run, summary

    try:
        mapping = parse_model_map(model_map)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--model-map") from exc
    with (
        openai.OpenAI(base_url=source_base_url, api_key=source_api_key) as source,
        openai.OpenAI(base_url=base_url, api_key=api_key) as destination,
    ):
        try:
            planned = plan(source, destination, mapping)
            if not dry_run:

                def progress(items: Any) -> Any:
                    with click.progressbar(list(items), label="importing", file=sys.stderr) as shown:
                        yield from shown

                run(source, destination, planned, progress)
        except openai.APIError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(summary(planned, dry_run))


@main.group()
def webhooks() -> None:
    """Webhook endpoints of projects, and their deliveries."""


@webhooks.command("add")
@click.option("--project", required=True, help="The project whose events go to this endpoint.")
@click.option("--url", required=True, help="https:// URL (http:// too outside production) that receives the events.")
@click.option("--event", "events", multiple=True, help="An event type to send (repeatable). Default: every type.")
def webhooks_add(project: str, url: str, events: tuple[str, ...]) -> None:
    """Add an endpoint; prints its id and its signing secret (shown only once)."""
    from service.webhooks.endpoints import add
    from service.webhooks.urls import RefusedUrl

    settings = get_settings()
    try:
        endpoint = asyncio.run(_with_session(settings, lambda session: add(session, settings, project, url, list(events))))
    except (RefusedUrl, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{endpoint.id} {endpoint.secret}")


@webhooks.command("list")
@click.option("--project", default=None, help="Only this project's endpoints.")
def webhooks_list(project: str | None) -> None:
    """List endpoints: id, project, URL, the events they receive."""
    from service.webhooks.endpoints import listed

    rows = asyncio.run(_with_session(get_settings(), lambda session: listed(session, project)))
    click.echo(f"{'ID':<28} {'PROJECT':<24} {'EVENTS':<30} URL")
    for endpoint, name in rows:
        click.echo(f"{endpoint.id:<28} {name:<24} {','.join(endpoint.events) or 'all':<30} {endpoint.url}")


@webhooks.command("remove")
@click.argument("endpoint_id")
def webhooks_remove(endpoint_id: str) -> None:
    """Remove an endpoint; its undelivered events are dropped."""
    from service.webhooks.endpoints import find, remove

    async def work(session: AsyncSession) -> bool:
        endpoint = await find(session, endpoint_id)
        if endpoint is not None:
            await remove(session, endpoint)
        return endpoint is not None

    if not asyncio.run(_with_session(get_settings(), work)):
        raise click.ClickException(f"no webhook endpoint {endpoint_id} (see `tailor webhooks list`)")
    click.echo(f"removed {endpoint_id}")


@webhooks.command("rotate")
@click.argument("endpoint_id")
def webhooks_rotate(endpoint_id: str) -> None:
    """Give an endpoint a new signing secret, used from the next attempt on; prints it."""
    from service.webhooks.endpoints import find, rotate

    async def work(session: AsyncSession) -> str | None:
        endpoint = await find(session, endpoint_id)
        return await rotate(session, endpoint) if endpoint is not None else None

    secret = asyncio.run(_with_session(get_settings(), work))
    if secret is None:
        raise click.ClickException(f"no webhook endpoint {endpoint_id} (see `tailor webhooks list`)")
    click.echo(secret)


@webhooks.command("deliveries")
@click.option("--endpoint", "endpoint_id", default=None, help="Only this endpoint's deliveries.")
@click.option("--limit", type=int, default=50, show_default=True)
def webhooks_deliveries(endpoint_id: str | None, limit: int) -> None:
    """The newest deliveries: webhook id, event, status, attempts, last answer or error."""
    from service.webhooks.endpoints import deliveries

    rows = asyncio.run(_with_session(get_settings(), lambda session: deliveries(session, endpoint_id, limit)))
    click.echo(f"{'WEBHOOK ID':<28} {'EVENT':<28} {'STATUS':<10} {'TRIES':<6} LAST")
    for d in rows:
        last = d.last_error or (str(d.last_status_code) if d.last_status_code else "-")
        click.echo(f"{d.id:<28} {d.event_type:<28} {d.status:<10} {d.attempts:<6} {last}")


@main.group()
def jobs() -> None:
    """Fine-tuning jobs, through the API."""


@jobs.command("follow")
@click.argument("job_id")
@api_options
def jobs_follow(job_id: str, base_url: str, api_key: str) -> None:
    """Show a job's progress bar, losses and events until it ends."""
    import openai

    from service.cli.follow import follow_job

    with openai.OpenAI(base_url=base_url, api_key=api_key) as client:
        job = follow_job(client, job_id)
    click.echo(f"{job.id}: {job.status}" + (f" -> {job.fine_tuned_model}" if job.fine_tuned_model else ""))
    if job.status != "succeeded":
        sys.exit(1)


@main.group()
def data() -> None:
    """Training files, offline."""


@data.command("check")
@click.argument("training_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", default=None, help="Base model whose tokenizer and context apply (default: the first one).")
@click.option("--validation-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--method", type=click.Choice(["supervised", "dpo"]), default="supervised", show_default=True)
@click.option("--validation-split", type=float, default=None, help="As the job's training.validation_split (default auto).")
@click.option("--measure", is_flag=True, help="Time one training step here for the duration estimate.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (the job's data_report.json).")
def data_check(
    training_file: Path,
    model: str | None,
    validation_file: Path | None,
    method: str,
    validation_split: float | None,
    measure: bool,
    as_json: bool,
) -> None:
    """The data report a fine-tuning job would show; exits 1 when the file cannot train."""
    from service.cli.datacheck import check, print_report
    from service.core.registry import load_registry
    from trainer.ml.config import ConfigError
    from trainer.ml.data import DatasetError

    settings = get_settings()
    registry = load_registry(settings.base_models_file)
    name = model or next(iter(registry))
    if name not in registry:
        raise click.BadParameter(f"no base model {name!r}; known: {', '.join(registry)}", param_hint="--model")
    options = {} if validation_split is None else {"validation_split": validation_split}
    try:
        found = check(registry[name], settings.resolved_model_cache_dir, training_file, validation_file, method, options, measure)
    except (DatasetError, ConfigError) as exc:
        code = getattr(exc, "code", "invalid_hyperparameters")
        click.echo(f"error ({code}): {getattr(exc, 'message', exc)}", err=True)
        sys.exit(1)
    print_report(found, as_json)


@main.group()
def models() -> None:
    """Models, through the API."""


@models.command("download")
@click.argument("model")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory to unpack into.")
@api_options
def models_download(model: str, output: Path, base_url: str, api_key: str) -> None:
    """Download a fine-tuned model's (or checkpoint's) adapter and unpack it: a peft directory."""
    import tarfile
    import tempfile
    import urllib.parse

    import httpx

    url = f"{base_url.rstrip('/')}/models/{urllib.parse.quote(model, safe=':')}/weights"
    with tempfile.TemporaryFile() as archive:
        with httpx.stream("GET", url, headers={"Authorization": f"Bearer {api_key}"}, timeout=600) as response:
            if response.status_code != 200:
                response.read()
                raise click.ClickException(f"{response.status_code}: {response.text[:500]}")
            for chunk in response.iter_bytes():
                archive.write(chunk)
        archive.seek(0)
        output.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=archive, mode="r:gz") as tar:
            tar.extractall(output, filter="data")  # no absolute paths, no links out of `output`
    click.echo(f"{model} -> {output}")


@main.group()
def evals() -> None:
    """Evaluations, through the API."""


@evals.command("compare")
@click.option(
    "--file",
    "test_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Chat-format JSONL test file; each example's last assistant message is the reference answer.",
)
@click.option("--model", "models", multiple=True, required=True, help="A model to evaluate (repeat: --model A --model B).")
@click.option(
    "--criterion",
    "criteria",
    multiple=True,
    help="A grader as JSON (repeatable). Default: an exact check and a fuzzy similarity on the reference.",
)
@click.option("--max-tokens", type=int, default=256, show_default=True, help="Longest answer generated per item.")
@api_options
def evals_compare(
    test_file: Path, models: tuple[str, ...], criteria: tuple[str, ...], max_tokens: int, base_url: str, api_key: str
) -> None:
    """Run models side by side on a test file; print pass rates per criterion and the items where they differ."""  # fmt: skip
    import openai

    from service.cli.evals import compare
    from service.evals.data import BadRow

    try:
        graders = [json.loads(c) for c in criteria] or None
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--criterion") from exc
    with openai.OpenAI(base_url=base_url, api_key=api_key) as client:
        try:
            _, text = compare(client, test_file, models, graders, max_tokens, lambda line: click.echo(line, err=True))
        except BadRow as exc:
            raise click.ClickException(f"{test_file}: {exc}") from exc
        except (openai.APIError, RuntimeError, TimeoutError) as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(text)


@evals.command("show")
@click.argument("run_id")
@api_options
def evals_show(run_id: str, base_url: str, api_key: str) -> None:
    """Print a run: its status, counts, pass rate per criterion and token usage."""
    import openai

    from service.cli.evals import show

    with openai.OpenAI(base_url=base_url, api_key=api_key) as client:
        try:
            click.echo(show(client, run_id))
        except (LookupError, openai.APIError) as exc:
            raise click.ClickException(str(exc)) from exc


@main.command()
def demo() -> None:
    """Run the main job end to end on this machine (private Redis, SQLite, local store)."""
    from service.cli.demo import main as run

    run()


@main.command()
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None, help="Write here instead of stdout.")
def openapi(output: Path | None) -> None:
    """Print the OpenAPI document generated from the app."""
    from service.api.openapi import render_openapi

    text = render_openapi()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
