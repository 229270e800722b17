"""Scheduled functions: a 2-second period and a cron expression in a time zone."""

from __future__ import annotations

import time

import minimodal

app = minimodal.App("tests-scheduled")


@app.function(schedule=minimodal.Period(seconds=2))
def tick() -> float:
    print("tick")
    return time.time()


cron_app = minimodal.App("tests-cron")


@cron_app.function(schedule=minimodal.Cron("*/5 * * * *", timezone="Europe/Paris"))
def every_five_minutes() -> str:
    return "cron"


ephemeral = minimodal.App("tests-ephemeral-schedule")


@ephemeral.function(schedule=minimodal.Period(seconds=1))
def every_second() -> None:
    minimodal.Queue.from_name("ephemeral-ticks", create_if_missing=True).put(time.time())
