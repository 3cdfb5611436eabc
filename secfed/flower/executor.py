"""A long-lived ClientApp executor for ``flower-supernode --isolation process``.

Where the Flower job's overhead went: Flower 1.41's SuperExec starts a fresh ``flwr-clientapp``
process for every message (one task per process: start Python, import Flower, install the
FAB, answer, exit). A secfed round is one message per client and stage, so on 2 cores four
nodes paid about 1-1.5 s of CPU each per message, in parallel with their own training: the
Flower job ran 2.4x (quiet) to 6.7x (loaded) the in-process job time.

With ``--isolation process`` a SuperNode starts no executor of its own and waits for one to
claim its tasks through its Runtime API (``AcquireTask``, the SuperExec's call). The node
agent does that here: it claims each ClientApp task, reads the message and context
(``PullTaskInput``), answers it in its own process, and pushes the reply and the task's status,
so a message costs a few local HTTP calls instead of a process. The ClientApp's isolation from
the SuperNode is kept (the agent is a separate process); in addition the node never runs code
sent by the server: a run whose app does not name secfed's ClientApp is answered with an
error. With a SuperExec secret (``--superexec-auth-secret-file``, given to both) only the
agent can claim the node's tasks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from flwr.app import Context, Message

log = logging.getLogger(__name__)

#: The ClientApp a secfed node agrees to run (the app's ``[tool.flwr.app.components]``).
CLIENT_APP_REF = "secfed.flower.client_app:app"
#: Claim polls: fast while messages keep coming (protocol stages follow each other closely),
#: slower when the node has been idle a while (a round's training elsewhere, evaluation).
FAST_POLL, IDLE_POLL, FAST_WINDOW = 0.02, 0.1, 3.0
HEARTBEAT_SECONDS = 10.0

Handler = Callable[["Message", "Context"], "Message"]


class TaskExecutor:
    """Claims and answers one SuperNode's ClientApp tasks, in this process."""

    def __init__(self, address: str, handler: Handler, *, secret: bytes | None = None):
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType
        from flwr.supercore.interceptors import (
            RuntimeVersionHttpInterceptor,
            SuperExecAuthHttpInterceptor,
        )
        from flwr.supercore.runtime import RuntimeHttpClient

        self.address, self.handler = address, handler
        interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if secret:
            interceptors.append(SuperExecAuthHttpInterceptor(
                master_secret=secret, protected_methods={"/flwr.proto.Runtime/AcquireTask"},
            ))  # fmt: skip
        # No retry invoker: Flower's raises SIGINT on some answers; this loop retries itself.
        self._claims = RuntimeHttpClient.from_server_address(
            address, insecure=True, root_certificates=None, interceptors=interceptors
        )
        self._request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        self.served = 0
        self._last_task = 0.0
        self._apps: dict[str, str | None] = {}  # FAB hash -> its ClientApp reference

    def poll_seconds(self) -> float:
        return FAST_POLL if time.monotonic() - self._last_task < FAST_WINDOW else IDLE_POLL

    def serve_one(self) -> bool:
        """Claim and answer one pending task; False when there was none."""
        res = self._claims.AcquireTask(self._request)
        if not (res.HasField("task") and res.token):
            return False
        self._run_task(res.token)
        self.served += 1
        self._last_task = time.monotonic()
        return True

    def serve(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; an unreachable SuperNode is retried, not fatal."""
        down_since: float | None = None
        while not stop.is_set():
            try:
                if self.serve_one():
                    continue
                down_since = None
            except httpx.HTTPError as err:
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("SuperNode Runtime API at %s unreachable (%s); retrying",
                                self.address, err)  # fmt: skip
                stop.wait(1.0)
                continue
            except Exception:  # one bad task must not end the node's service
                if stop.is_set():
                    return
                log.exception("ClientApp task handling failed; serving on")
                stop.wait(1.0)
                continue
            stop.wait(self.poll_seconds())

    def close(self) -> None:
        self._claims.close()

    def _run_task(self, token: str) -> None:
        from flwr.app import Error, Message
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
        )
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import (
            pull_task_input,
            push_message,
            push_task_output,
        )

        client = RuntimeHttpClient.from_server_address(
            self.address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)],
        )  # fmt: skip
        beating = threading.Event()
        heart = threading.Thread(target=_heartbeat, args=(client, beating), daemon=True)
        heart.start()
        context = None
        try:
            message, context, _run, fab = pull_task_input(client)
            status, details = SubStatus.COMPLETED, ""
            try:
                self._check_app(fab)
                reply = self.handler(message, context)
            except Exception as err:  # the server sees an error reply: this node dropped
                log.exception("the ClientApp task failed")
                status, details = SubStatus.FAILED, f"{type(err).__name__}: {err}"
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, details),
                                reply_to=message)  # fmt: skip
            push_message(client, reply, context)
            push_task_output(client=client, context=context, sub_status=status, details=details)
        finally:
            beating.set()
            heart.join(timeout=5)
            client.close()

    def _check_app(self, fab: Any) -> None:
        """Refuse a run whose app is not secfed's ClientApp (the node runs no sent code)."""
        if fab.hash_str not in self._apps:
            from flwr.common.config import get_fab_config

            try:
                comps = get_fab_config(fab.content)["tool"]["flwr"]["app"]["components"]
                self._apps[fab.hash_str] = comps.get("clientapp")
            except (KeyError, ValueError) as err:
                log.warning("unreadable app bundle: %s", err)
                self._apps[fab.hash_str] = None
        ref = self._apps[fab.hash_str]
        if ref != CLIENT_APP_REF:
            raise PermissionError(
                f"this node runs only {CLIENT_APP_REF!r}; the run's app names {ref!r}"
            )


def _heartbeat(client: Any, done: threading.Event) -> None:
    """Keep a long task (training a real model) claimed; failures are left to Flower."""
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

    while not done.wait(HEARTBEAT_SECONDS):
        try:
            client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
        except httpx.HTTPError as err:
            log.debug("task heartbeat failed: %s", err)


def read_secret(path: str | None) -> bytes | None:
    """The SuperExec secret shared with the SuperNode (raw file bytes), or None."""
    if not path:
        return None
    from pathlib import Path

    secret = Path(path).read_bytes()
    if not secret:
        raise ValueError(f"SuperExec secret file {path} is empty")
    return secret


def run_in_thread(name: str, target: Any, stop: threading.Event) -> None:
    """Run ``target`` in a daemon thread; its failure is logged and stops the agent."""

    def run() -> None:
        try:
            target()
        except BaseException:
            if not stop.is_set():
                log.exception("the agent's %s thread failed", name)
        finally:
            stop.set()

    threading.Thread(target=run, name=name, daemon=True).start()


def start_executor(
    ask: Callable[[Any], Any], address: str, secret_file: str | None, stop: threading.Event
) -> TaskExecutor:
    """Claim and answer the SuperNode's ClientApp tasks in a thread of this process."""
    from .client_app import answer
    from .supernode import shorten_pull_backoff

    shorten_pull_backoff()  # a task is often claimed before the node holds all its content
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    executor = TaskExecutor(address, lambda message, context: answer(message, context, ask),
                            secret=read_secret(secret_file))  # fmt: skip
    run_in_thread("clientapp-tasks", lambda: executor.serve(stop), stop)
    return executor
