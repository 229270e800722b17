"""A function with a volume and a secret, for `minimodal shell` and `container exec` in its container."""

from __future__ import annotations

import minimodal

app = minimodal.App("tests-shell", secrets=[minimodal.Secret.from_dict({"SHELL_SECRET": "s3cret"})])
vol = minimodal.Volume.from_name("shell-vol", create_if_missing=True)


@app.function(volumes={"/data": vol}, timeout=60)
def probe() -> str:
    with open("/data/hello.txt") as f:
        return f.read()
