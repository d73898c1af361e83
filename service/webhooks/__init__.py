"""Webhooks as OpenAI sends them: endpoints per project, Standard Webhooks signatures, and
at-least-once delivery from the SQL outbox (service/core/outbox.py writes it)."""
