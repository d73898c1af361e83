"""The `tailor` command: the composition root, the one package that may import the API,
the trainer and the inference launcher (each lazily, inside its command)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import click

from service.core.logs import setup_logging
from service.core.settings import Settings, get_settings

PROJECT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@click.group()
def main() -> None:
    """Tailor: self-hosted fine-tuning that speaks the OpenAI API."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to bind.")
@click.option("--log-level", default="info", show_default=True)
def serve(host: str, port: int, log_level: str) -> None:
    """Run the API server (migrations are applied at start)."""
    import uvicorn

    from service.api.app import create_app

    setup_logging(log_level)
    # log_config=None: uvicorn adds no handlers of its own, so its lines go through the root
    # handler set up above, in the same format. access_log=False: the app writes its own
    # access line, after the response (service/api/middleware.py says why).
    uvicorn.run(
        create_app(get_settings()),
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


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


@main.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--project", required=True, help="Project the key acts for (created on first use).")
def keys_create(project: str) -> None:
    """Create an API key and print it (it is shown only once)."""
    if not PROJECT_NAME.match(project):
        raise click.BadParameter("use 1-64 letters, digits, '_' or '-'", param_hint="--project")
    key = asyncio.run(_create_key(get_settings(), project))
    click.echo(key)


async def _create_key(settings: Settings, project: str) -> str:
    from service.api.auth import create_key
    from service.core.db import make_engine, make_sessionmaker, run_migrations_async

    url = settings.resolved_database_url
    await run_migrations_async(url)
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as session:
            key, _ = await create_key(session, project)
    finally:
        await engine.dispose()
    return key


@main.group()
def jobs() -> None:
    """Fine-tuning jobs, through the API."""


@jobs.command("follow")
@click.argument("job_id")
@click.option("--base-url", envvar="TAILOR_BASE_URL", default="http://127.0.0.1:8000/v1", show_default=True)
@click.option("--api-key", envvar="TAILOR_API_KEY", required=True, help="A project key (or set TAILOR_API_KEY).")
def jobs_follow(job_id: str, base_url: str, api_key: str) -> None:
    """Show a job's progress bar, losses and events until it ends."""
    import openai

    from service.cli.follow import follow_job

    with openai.OpenAI(base_url=base_url, api_key=api_key) as client:
        job = follow_job(client, job_id)
    click.echo(f"{job.id}: {job.status}" + (f" -> {job.fine_tuned_model}" if job.fine_tuned_model else ""))
    if job.status != "succeeded":
        sys.exit(1)


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
