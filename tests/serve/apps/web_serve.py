"""A web endpoint for `modal serve`: the test edits the version and waits for the reload."""

import modal

app = modal.App("ferry-web-serve")
image = (
    modal.Image.debian_slim()
    .pip_install("fastapi[standard]")
    .run_commands("mkdir -p /srv && echo served by a web_server > /srv/index.html")
)


@app.function(image=image)
@modal.fastapi_endpoint()
def version():
    return "v1"
