"""`tailor import openai` against a second Tailor as the source (it speaks the same API):
two jobs and their files move across with their settings, a dry run changes nothing, and a
second run imports nothing new."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from conftest import fresh_database_url

from service.cli.devservers import TailorServer, running_server

BASE = "SmolLM2-135M-Instruct"
LINE = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'


@pytest.fixture(scope="module")
def source(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TailorServer]:
    data = tmp_path_factory.mktemp("import-source")
    with fresh_database_url(data / "db") as db:
        env = {**server_env, "TAILOR_DATABASE_URL": db, "TAILOR_QUEUE_NAME": server_env["TAILOR_QUEUE_NAME"] + ":source"}
        with running_server({**env, "TAILOR_STORAGE_URL": (data / "objects").as_uri()}, data / "server") as s:
            yield s


def test_jobs_and_files_move_across_once(source: TailorServer, server: TailorServer, tmp_path: Path) -> None:
    source_key, dest_key = source.create_key("old-home"), server.create_key("new-home")
    src = openai.OpenAI(base_url=source.base_url, api_key=source_key, max_retries=0)
    dest = openai.OpenAI(base_url=server.base_url, api_key=dest_key, max_retries=0)
    train = src.files.create(file=("train.jsonl", LINE * 12), purpose="fine-tune").id
    valid = src.files.create(file=("valid.jsonl", LINE * 3), purpose="fine-tune").id
    first = src.fine_tuning.jobs.create(
        model=BASE, training_file=train, validation_file=valid, suffix="first", seed=7, metadata={"team": "search"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )  # fmt: skip
    second = src.fine_tuning.jobs.create(
        model=BASE, training_file=train, suffix="second", seed=8,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
    )  # fmt: skip
    args = ["import", "openai", "--source-api-key", source_key, "--source-base-url", source.base_url,
            "--model-map", f"{BASE}=SmolLM2-135M-Instruct", "--base-url", server.base_url, "--api-key", dest_key]  # fmt: skip

    dry = server.cli(*args, "--dry-run").stdout
    assert "2 to import (dry run)" in dry and first.id in dry and second.id in dry, dry
    assert dest.fine_tuning.jobs.list().data == []

    out = server.cli(*args)
    assert "2 imported, 0 skipped" in out.stdout, out.stdout
    made = {j.metadata["imported_from"]: j for j in dest.fine_tuning.jobs.list().data}
    assert set(made) == {first.id, second.id}
    a, b = made[first.id], made[second.id]
    assert (a.model, a.user_provided_suffix, a.seed, a.metadata["team"]) == (BASE, "first", 7, "search")
    assert a.method.supervised.hyperparameters.n_epochs == 2 and a.method.supervised.hyperparameters.batch_size == 4
    assert b.method.type == "dpo" and b.method.dpo.hyperparameters.beta == 0.2
    # The files came across byte for byte, the shared training file once.
    assert dest.files.content(a.training_file).read() == LINE * 12
    assert dest.files.content(a.validation_file).read() == LINE * 3
    assert a.training_file == b.training_file and dest.files.retrieve(a.training_file).filename == "train.jsonl"

    again = server.cli(*args).stdout
    assert "0 imported, 2 skipped" in again and again.count("already imported") == 2, again
    assert len(dest.fine_tuning.jobs.list().data) == 2

    # Into another project, where nothing was imported: a model the map does not name is skipped.
    elsewhere = [*args[:6], "--model-map", "gpt-4o-mini=SmolLM2-135M-Instruct", *args[8:-1], server.create_key("third-home")]
    unmapped = server.cli(*elsewhere, "--dry-run").stdout
    assert unmapped.count(f"no --model-map entry for {BASE}") == 2, unmapped
    src.close()
    dest.close()
