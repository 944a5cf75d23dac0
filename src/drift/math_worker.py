"""math-verify in a worker process: one persistent ``python -c`` process per Python process.

Why: sympy can take forever on hostile input (``9^{9^{9^{9}}}`` never finishes), and
math-verify's own timeout uses ``signal.alarm``, which only works on the main thread. So
math-verify runs in a worker (:class:`MathWorker`, fed one JSON line per question); a request
that overruns its limit kills the worker, which is restarted, and :func:`drift.verifiers.verify_math`
counts it as wrong. The worker caps its own memory, so a sympy blow-up fails with ``MemoryError``
instead of swapping. Nothing here evaluates model text: it is only parsed, by math-verify's LaTeX
grammar inside the worker.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import weakref

_WORKER_MEMORY_BYTES = 4 << 30  # a sympy blow-up fails with MemoryError instead of swapping

_WORKER_SOURCE = f"""
import json, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, ({_WORKER_MEMORY_BYTES}, {_WORKER_MEMORY_BYTES}))
except Exception:
    pass
from math_verify import parse, verify

def check(prediction, gold):
    # No math-verify timeouts (signals): the parent process kills this one when it overruns.
    gold = parse("$" + gold + "$", parsing_timeout=None)
    return verify(gold, parse("$" + prediction + "$", parsing_timeout=None), timeout_seconds=None)

replies, sys.stdout = sys.stdout, sys.stderr  # a stray print cannot break the protocol
check("1/2", "0.5")  # build the LaTeX grammar before the first timed request
print("ready", file=replies, flush=True)
for line in sys.stdin:
    try:
        reply = "1" if check(*json.loads(line)) else "0"
    except BaseException as e:  # RecursionError, MemoryError, sympy internals
        reply = "e " + type(e).__name__
    print(reply, file=replies, flush=True)
"""


class MathWorkerError(RuntimeError):
    """The worker failed on a request (exception inside math-verify, or the process died)."""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:  # pragma: no cover - closing a pipe to a killed process
            pass


class MathWorker:
    """A persistent ``python -c`` process answering ``[prediction, gold]`` JSON lines.

    Thread-safe (requests are serialised). Started on first use and again after a timeout or a
    crash; killed when garbage-collected or at interpreter exit.
    """

    def __init__(self, startup_timeout: float = 120.0):
        self.startup_timeout = startup_timeout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._replies: queue.Queue = queue.Queue()
        self._finalizer: weakref.finalize | None = None
        self._booting = False

    def _start(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_SOURCE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        replies: queue.Queue = queue.Queue()  # a fresh queue: no stale reply can reach a new request

        def pump() -> None:
            assert proc.stdout is not None  # opened with stdout=PIPE
            try:
                for line in proc.stdout:
                    replies.put(line.rstrip("\n"))
            except (OSError, ValueError):  # the pipe was closed under us by _stop
                pass
            replies.put(None)  # end of file: the process is gone

        threading.Thread(target=pump, name="drift-math-worker", daemon=True).start()
        self._proc, self._replies = proc, replies
        self._finalizer = weakref.finalize(self, _stop, proc)

    def _restart(self) -> None:
        """Kill the current process (if any) and start the next one now, so it boots meanwhile."""
        if self._finalizer is not None:
            self._finalizer()
        self._start()
        self._booting = True

    def _ensure_ready(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            self._restart()
        if self._booting:  # its first line must be "ready", not a verdict
            if self._replies.get(timeout=self.startup_timeout) != "ready":  # queue.Empty if it hangs
                if self._finalizer is not None:
                    self._finalizer()
                self._proc = None  # start afresh next time (poll() may not see the exit yet)
                raise MathWorkerError("the math-verify worker did not start (is math-verify installed?)")
            self._booting = False

    def check(self, prediction: str, gold: str, timeout: float) -> bool:
        """math-verify's verdict; :class:`TimeoutError` after ``timeout`` seconds (worker restarted)."""
        with self._lock:
            try:
                self._ensure_ready()
            except queue.Empty:
                self._restart()
                raise MathWorkerError("the math-verify worker did not start in time") from None
            stdin = self._proc.stdin if self._proc is not None else None
            assert stdin is not None  # _ensure_ready started a worker with stdin=PIPE
            try:
                stdin.write(json.dumps([prediction, gold]) + "\n")
                stdin.flush()
                reply = self._replies.get(timeout=timeout)
            except queue.Empty:
                self._restart()
                raise TimeoutError(f"math-verify took longer than {timeout} s") from None
            except OSError:  # broken pipe: the worker died between requests
                self._restart()
                raise MathWorkerError("the math-verify worker died") from None
            if reply is None:
                self._restart()
                raise MathWorkerError("the math-verify worker died")
            if reply.startswith("e"):
                raise MathWorkerError(f"math-verify raised {reply[2:]}")
            return reply == "1"

    def close(self) -> None:
        """Stop the process now (it would be restarted by a later :meth:`check`)."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._proc = None


SHARED_WORKER = MathWorker()
