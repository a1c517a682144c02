# Ferry's memory-snapshot zygote (crates/worker/src/zygote.rs).
#
# For a function with enable_memory_snapshot=True, one zygote per function definition does what
# Modal does before it takes a memory snapshot: imports the user's code (global scope) and runs
# the class's @modal.enter(snap=True) methods, with the task credential of the task that caused
# it. Then it drops its client's connections (the client's own pre-snapshot step, after which
# every RPC goes to a fresh client built from the environment) and waits on stdin for orders.
# Each order forks one child that is the task's container process: it takes the task's
# environment (credential, secrets), its container arguments, its own stdout/stderr FIFOs, and
# runs the modal container entrypoint with the user code already imported and the snap=True
# enter methods already done; @modal.enter(snap=False) methods run in each child.
#
# Lines Ferry reads from the zygote's stdout start with "\x1eferry-zygote ".
import json
import os
import signal
import sys

import standby

_MARK = "\x1eferry-zygote "
_children = {}  # pid -> task id


def _say(**event):
    # Straight to the descriptor: also called from the SIGCHLD handler, which must not
    # re-enter sys.stdout's buffer; lines this short are written atomically to the pipe.
    os.write(1, (_MARK + json.dumps(event) + "\n").encode())


def _reap(*_):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        task = _children.pop(pid, None)
        if task is None:
            continue
        if os.WIFSIGNALED(status):
            _say(exit=task, code=128 + os.WTERMSIG(status), signal=os.WTERMSIG(status))
        else:
            _say(exit=task, code=os.WEXITSTATUS(status), signal=None)


def _child(order, out, err, service):
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.close(out)
    os.close(err)
    # The app files are the zygote's own (a new definition gets a new zygote).
    standby._apply({"env": order["env"]})

    import modal._container_entrypoint as ep
    from modal._runtime.task_lifecycle_manager import UserException
    from modal.client import Client
    from modal_proto import api_pb2

    # The user code is imported and its snap=True enter methods ran: reuse both. (The event
    # loop is the child's own: asyncio loops do not survive a fork.)
    ep.hydrate_function = lambda *args, **kwargs: service
    service.lifecycle_presnapshot = _done_presnapshot

    args = api_pb2.ContainerArguments()
    with open(os.environ["MODAL_CONTAINER_ARGUMENTS_PATH"], "rb") as f:
        args.ParseFromString(f.read())
    client = Client.from_env()
    code = 0
    try:
        ep.main(args, client)
    except UserException:
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _done_presnapshot(*args, **kwargs):
    import contextlib

    return contextlib.nullcontext()


def _serve(service, client):
    # What the client does before a snapshot: its connections go, later RPCs use a client
    # built from the (then updated) environment.
    try:
        import asyncio

        from modal._utils.async_utils import synchronizer

        sync_loop = synchronizer._get_loop(start=True)
        asyncio.run_coroutine_threadsafe(client._prep_for_snapshot(), sync_loop).result(30)
    except Exception as e:  # an older client: children reconnect after the pid change
        _say(warning=f"could not release the client's connections: {e!r}")
    signal.signal(signal.SIGCHLD, _reap)
    _say(ready=True, pid=os.getpid())
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        order = json.loads(line)
        if "kill" in order:
            for pid, task in list(_children.items()):
                if task == order["kill"]:
                    try:
                        os.kill(pid, order.get("signal", signal.SIGKILL))
                    except ProcessLookupError:
                        pass
            continue
        # The task's output FIFOs are opened here, before the fork, so that Ferry (which holds
        # their read ends) sees end-of-file exactly when the child and its descendants are gone.
        try:
            out = os.open(order["stdout"], os.O_WRONLY)
            err = os.open(order["stderr"], os.O_WRONLY)
        except OSError as e:
            _say(refused=order["task"], error=f"cannot open the task's output: {e}")
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
            try:
                _child(order, out, err, service)
            finally:
                os._exit(1)
        os.close(out)
        os.close(err)
        _children[pid] = order["task"]
        _say(child=order["task"], pid=pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
    # Ferry closed our stdin: stop the children, then leave.
    for pid in list(_children):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(0)


def main():
    import modal._container_entrypoint as ep
    from modal._runtime.task_lifecycle_manager import TaskLifecycleManager, UserException
    from modal._runtime.user_code_event_loop import UserCodeEventLoop
    from modal._utils.async_utils import synchronizer
    from modal.client import Client
    from modal_proto import api_pb2

    args = api_pb2.ContainerArguments()
    with open(os.environ["MODAL_CONTAINER_ARGUMENTS_PATH"], "rb") as f:
        args.ParseFromString(f.read())
    client = Client.from_env()
    _client = synchronizer._translate_in(client)
    tlm = TaskLifecycleManager(args.task_id, args.function_id, args.function_def, None, client)
    try:
        service = ep.hydrate_function(args, tlm, args.function_def, _client)
        with UserCodeEventLoop() as loop:
            with service.lifecycle_presnapshot(loop, tlm):
                pass
    except UserException:
        _say(failed="the snapshot's set-up failed; see the traceback above")
        os._exit(1)
    except BaseException:
        import traceback

        traceback.print_exc()
        _say(failed="the snapshot's set-up failed; see the traceback above")
        os._exit(1)
    _serve(service, _client)
