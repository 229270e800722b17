"""Functions that read the secrets they were deployed with."""

from __future__ import annotations

import os

import minimodal

app = minimodal.App("tests-secrets", secrets=[minimodal.Secret.from_dict({"LAYER": "app", "APP_ONLY": "a"})])


@app.function(
    timeout=60,
    secrets=[
        minimodal.Secret.from_name("mm-test-db"),
        minimodal.Secret.from_dict({"LAYER": "function", "DROPPED": None}),
    ],
)
def read_env(names: list[str]) -> dict[str, str | None]:
    print("this line is logged; the secret is not")
    return {name: os.environ.get(name) for name in names}


missing_app = minimodal.App("tests-secrets-missing")


@missing_app.function(secrets=[minimodal.Secret.from_name("mm-no-such-secret")])
def never_deployed() -> None:
    return None


@app.function(timeout=60)
def read_env_unnamed(names: list[str]) -> dict[str, str | None]:
    """Same app, same image, no secret of its own: only the app-level one reaches it."""
    return {name: os.environ.get(name) for name in names}
