"""An app whose function answers the version it was deployed as (APP_VERSION at deploy time,
carried into the container by a secret)."""

import os

import modal

app = modal.App("ferry-versioned")
version_secret = modal.Secret.from_dict({"APP_VERSION": os.environ.get("APP_VERSION", "0")})


@app.function(secrets=[version_secret])
def version():
    return os.environ["APP_VERSION"]


@app.function(secrets=[version_secret])
def slow(seconds: float):
    import time

    time.sleep(seconds)
    return os.environ["APP_VERSION"]
