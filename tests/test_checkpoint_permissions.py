"""Checkpoint permissions through the official SDK: an admin key of the owning project shares
a checkpoint with a second project, whose key may then use it (chat resolves it: without
vLLM here that is a 503 instead of the 404 of a model it may not use; an eval run on it is
accepted); deleting the permission stops that at once; a non-admin key gets 403; bodies
match the spec."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from helpers_db import succeed_job
from spec import assert_error_envelope, validate

from service.cli.devservers import TailorServer

LINE = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'


def _project_id(server: TailorServer, project: str) -> str:
    rows = [line.split() for line in server.cli("keys", "list", "--project", project).stdout.splitlines()[1:]]
    return rows[0][4]


def _chat_status(server: TailorServer, key: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(f"{server.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}).status_code


def _eval_run(client: openai.OpenAI, model: str) -> Any:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    check = {"type": "string_check", "name": "q", "input": "{{sample.output_text}}", "reference": "a", "operation": "eq"}
    ev = client.evals.create(
        data_source_config={"type": "custom", "item_schema": schema, "include_sample_schema": True}, testing_criteria=[check]
    )
    template = {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]}
    source = {"type": "file_content", "content": [{"item": {"q": "x"}}]}
    return client.evals.runs.create(
        ev.id, data_source={"type": "completions", "model": model, "input_messages": template, "source": source}
    )


def test_an_admin_shares_a_checkpoint_and_deleting_the_grant_stops_it(server: TailorServer, server_env: dict[str, str]) -> None:
    member_key, admin_key = (
        server.create_key("sharer"),
        server.cli("keys", "create", "--admin", "--project", "sharer").stdout.strip(),
    )
    guest_key = server.create_key("guest")
    guest_project = _project_id(server, "guest")
    member = openai.OpenAI(base_url=server.base_url, api_key=member_key, max_retries=0)
    admin = openai.OpenAI(base_url=server.base_url, api_key=admin_key, max_retries=0)
    guest = openai.OpenAI(base_url=server.base_url, api_key=guest_key, max_retries=0)
    file_id = member.files.create(file=("t.jsonl", LINE * 10), purpose="fine-tune").id
    job = member.fine_tuning.jobs.create(model="SmolLM2-135M-Instruct", training_file=file_id)
    finished = succeed_job(server_env["TAILOR_DATABASE_URL"], job.id, "sharer", steps=[2])
    checkpoint = finished.checkpoints[2][1]

    assert _chat_status(server, guest_key, checkpoint) == 404  # not shared yet
    with pytest.raises(openai.NotFoundError):
        _eval_run(guest, checkpoint)
    guest_file = guest.files.create(file=("t.jsonl", LINE * 10), purpose="fine-tune").id
    with pytest.raises(openai.NotFoundError) as unshared:  # nor can it be fine-tuned from
        guest.fine_tuning.jobs.create(model=checkpoint, training_file=guest_file)
    assert unshared.value.code == "model_not_found"
    # Only an admin key manages sharing.
    for call in (
        lambda: member.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[guest_project]),
        lambda: member.fine_tuning.checkpoints.permissions.list(checkpoint),
    ):
        with pytest.raises(openai.PermissionDeniedError) as denied:
            call()
        assert assert_error_envelope(denied.value.response.json(), 403)["code"] == "insufficient_permissions"

    raw = admin.fine_tuning.checkpoints.permissions.with_raw_response.create(checkpoint, project_ids=[guest_project])
    validate(raw.http_response.json(), "ListFineTuningCheckpointPermissionResponse")
    (granted,) = raw.parse().data
    assert granted.project_id == guest_project and granted.object == "checkpoint.permission"
    listed = admin.fine_tuning.checkpoints.permissions.list(checkpoint)
    assert [p.id for p in listed.data] == [granted.id]
    # Granting twice changes nothing; unknown projects and foreign models are refused.
    again = admin.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[guest_project])
    assert [p.id for p in again.data] == [granted.id]
    with pytest.raises(openai.BadRequestError) as bad:
        admin.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=["proj_nope"])
    assert bad.value.body["param"] == "project_ids[0]"  # type: ignore[index]

    # Shared: the guest's requests now reach inference (503: no vLLM runs in this test).
    assert _chat_status(server, guest_key, checkpoint) == 503
    assert _eval_run(guest, checkpoint).status == "queued"
    assert _chat_status(server, guest_key, finished.fine_tuned_model) == 404  # only what was shared
    continued = guest.fine_tuning.jobs.create(model=checkpoint, training_file=guest_file)  # continued fine-tuning
    assert continued.model == checkpoint and continued.status == "validating_files"
    guest.fine_tuning.jobs.cancel(continued.id)

    deleted = admin.fine_tuning.checkpoints.permissions.delete(granted.id, fine_tuned_model_checkpoint=checkpoint)
    assert deleted.deleted and deleted.id == granted.id
    validate(deleted.model_dump(), "DeleteFineTuningCheckpointPermissionResponse")
    assert _chat_status(server, guest_key, checkpoint) == 404  # at once
    with pytest.raises(openai.NotFoundError):
        _eval_run(guest, checkpoint)
    with pytest.raises(openai.NotFoundError):
        guest.fine_tuning.jobs.create(model=checkpoint, training_file=guest_file)
    with pytest.raises(openai.NotFoundError):
        admin.fine_tuning.checkpoints.permissions.delete(granted.id, fine_tuned_model_checkpoint=checkpoint)
    # Another project's admin cannot share what it does not own.
    other_admin = server.cli("keys", "create", "--admin", "--project", "guest").stdout.strip()
    with (
        openai.OpenAI(base_url=server.base_url, api_key=other_admin, max_retries=0) as intruder,
        pytest.raises(openai.NotFoundError),
    ):
        intruder.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[guest_project])
    for client in (member, admin, guest):
        client.close()
