"""Stopping and restarting `tailor serve` on the same data directory loses nothing."""

from __future__ import annotations

from pathlib import Path

import openai
from conftest import fresh_database_url, running_server
from spec import validate

LINES = b"".join(
    b'{"messages": [{"role": "user", "content": "q%d"}, {"role": "assistant", "content": "a"}]}\n' % i for i in range(12)
)


def test_restart_on_the_same_data_dir_loses_nothing(tmp_path: Path, redis_url: str, queue_name: str) -> None:
    data_dir = tmp_path / "data"
    with fresh_database_url(tmp_path / "db") as db_url:
        env = {"TAILOR_DATABASE_URL": db_url, "TAILOR_REDIS_URL": redis_url, "TAILOR_QUEUE_NAME": queue_name}
        with running_server(env, data_dir) as first:
            key = first.create_key("restart")
            with openai.OpenAI(base_url=first.base_url, api_key=key, max_retries=0) as client:
                kept = client.files.create(file=("train.jsonl", LINES), purpose="fine-tune")
                deleted = client.files.create(file=("gone.jsonl", LINES), purpose="fine-tune")
                client.files.delete(deleted.id)
                job = client.fine_tuning.jobs.create(
                    model="SmolLM2-135M-Instruct", training_file=kept.id, suffix="restart", metadata={"team": "a"}
                )
                paused = client.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=kept.id)
                client.fine_tuning.jobs.pause(paused.id)
                events_before = [e.id for e in client.fine_tuning.jobs.list_events(paused.id).data]

        # Same data dir and database, a new process (and port): everything is still there.
        with running_server(env, data_dir) as second:
            with openai.OpenAI(base_url=second.base_url, api_key=key, max_retries=0) as client:
                assert client.files.content(kept.id).read() == LINES
                assert [f.id for f in client.files.list().data] == [kept.id]
                again = client.fine_tuning.jobs.retrieve(job.id)
                assert again.status == "validating_files"
                assert again.metadata == {"team": "a"} and again.user_provided_suffix == "restart"
                assert again.seed == job.seed
                validate(again.model_dump(mode="json", exclude_unset=True), "FineTuningJob")
                assert client.fine_tuning.jobs.retrieve(paused.id).status == "paused"
                assert [e.id for e in client.fine_tuning.jobs.list_events(paused.id).data] == events_before
                assert client.fine_tuning.jobs.resume(paused.id).status == "queued"
                # A key made before the restart still works; a second key for the project does too.
                key2 = second.create_key("restart")
            with openai.OpenAI(base_url=second.base_url, api_key=key2, max_retries=0) as client:
                assert {j.id for j in client.fine_tuning.jobs.list().data} == {job.id, paused.id}
