"""Worker-side runtime: where user code runs (runtimes), warm pools of runners, the image builder.

Depends on ``minimodal`` only; ``mm_app.tasks`` depends on this package, never the other way.
"""
