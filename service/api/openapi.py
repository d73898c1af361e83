"""The project's OpenAPI document, rendered from the app so it cannot drift from the code."""

from __future__ import annotations

import yaml

from service.api.app import create_app
from service.core.settings import Settings


def render_openapi() -> str:
    # Building the schema touches no database or queue; any settings will do.
    app = create_app(Settings(_env_file=None))
    return yaml.safe_dump(app.openapi(), sort_keys=False, allow_unicode=True, width=120)
