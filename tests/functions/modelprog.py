"""A Modal-shaped program for the container tests: a module-level FastAPI app, an imports() block for a
package that only the image has, and functions calling functions with no network."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI

import minimodal

image = minimodal.Image.debian_slim().pip_install("fastapi==0.115.12", "tomli-w==1.2.0")
app = minimodal.App("tests-model-docker", image=image)

with image.imports():
    import tomli_w  # installed in the image only: this block must run in the container

web_app = FastAPI()  # at module level: built where the module is imported, never pickled


@web_app.get("/square/{x}")
def square(x: int) -> dict[str, Any]:
    return {"square": x * x, "docker": os.path.exists("/.dockerenv")}


@app.function()
@minimodal.asgi_app()
def api() -> FastAPI:
    return web_app


@app.function()
def to_toml(data: dict[str, Any]) -> str:
    return tomli_w.dumps(data)


@app.function()
def leaf(x: int) -> int:
    return x + 1


@app.function(block_network=True)
def offline(x: int) -> tuple[int, list[str]]:
    return leaf.remote(x) * 10, sorted(os.listdir("/sys/class/net"))
