"""Scheduled functions. Each run of `tick` records the time it ran in a Dict whose name the
test passes through a secret (TICKS_DICT), so every test counts its own runs."""

import os
import time

import modal

app = modal.App("ferry-scheduled")
ticks = modal.Secret.from_dict({"TICKS_DICT": os.environ.get("TICKS_DICT", "")})


# TICKS_SCHEDULE=off at deploy time deploys `tick` without its schedule.
period = None if os.environ.get("TICKS_SCHEDULE") == "off" else modal.Period(seconds=2)


@app.function(schedule=period, secrets=[ticks])
def tick():
    modal.Dict.from_name(os.environ["TICKS_DICT"], create_if_missing=True)[repr(time.time())] = True
    print("scheduled tick ran", flush=True)


@app.function(schedule=modal.Cron("30 6 * * 1-5", timezone="America/New_York"))
def weekday_report():
    print("weekday report")


@app.function(min_containers=1)
def warm():
    return "warm"


@app.local_entrypoint()
def main(wait: float = 8.0):
    """For `modal run`: the schedule fires while the app runs."""
    time.sleep(wait)
    d = modal.Dict.from_name(os.environ["TICKS_DICT"], create_if_missing=True)
    print(f"ticks while running: {d.len()}")
