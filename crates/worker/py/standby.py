# Ferry's standby driver: the program of a pooled task container (crates/worker/src/pool.rs).
#
# A standby is an ordinary task container, started before any task needs it, whose Python has
# already imported the modal container runtime (the 200-350 ms that dominate a cold start).
# It then blocks on stdin for exactly one order: one JSON line with the task's environment
# (credentials, secrets, MODAL_* variables) and the app files to link in. It applies the order
# and runs `modal._container_entrypoint` as `python -m` would. End of input without an order
# means the pool no longer needs this container: it exits quietly.
#
# With FERRY_ZYGOTE=1 it is a memory-snapshot zygote instead (ferry_zygote.py next to this
# file): orders then come one per forked child.
import json
import os
import sys


def _apply(order):
    """The task's environment and files; returns nothing, raises on a bad order."""
    os.environ.update(order["env"])
    for target, source in order.get("links", []):
        parent = os.path.dirname(target)
        if parent:
            os.makedirs(parent, exist_ok=True)
        if os.path.lexists(target) and not os.path.isdir(target):
            os.unlink(target)
        os.symlink(source, target)
    import importlib

    importlib.invalidate_caches()


def _run_entrypoint():
    import runpy

    # As `python -m` runs it: a fresh `__main__` from the module's code (its imports are all
    # loaded already). The copy imported ahead of time leaves `sys.modules` first, or runpy
    # warns in the user's logs that the module was imported before it ran.
    sys.modules.pop("modal._container_entrypoint", None)
    runpy.run_module("modal._container_entrypoint", run_name="__main__", alter_sys=True)


def main():
    # `python -m` puts the working directory first on sys.path, a script its own directory.
    sys.path[0] = os.getcwd()
    if os.environ.get("FERRY_ZYGOTE") == "1":
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, here)
        import ferry_zygote

        sys.path.remove(here)
        ferry_zygote.main()
        return
    import modal._container_entrypoint  # noqa: F401  (the point of a standby)

    line = sys.stdin.buffer.readline()
    if not line.strip():
        os._exit(0)
    order = json.loads(line)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _apply(order)
    del order, line
    _run_entrypoint()


if __name__ == "__main__":
    main()
