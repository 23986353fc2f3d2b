"""Command-line runs without paying Python's start and torch's import each time.

A test that runs `python -m unet_seg.train ...` in a subprocess spends most of its time
starting Python and importing torch and Lightning (about 4 s each run on 2 cores). A
`Forker` starts one server process that imports those modules once; each run is then a
`fork` of it that sets its own `sys.argv`, working directory and environment, redirects
its output to files and runs the module as `__main__`, as `python -m` would. Each run is
its own process: its exit status, signals (a SIGKILL it sends itself), Hydra's global
state and its threads are its own, and the server never runs a torch operation, so no
thread pool is forked. The parts of `subprocess` tests use (`run`, `Popen`'s `wait`,
`communicate`, `poll`, `kill`) keep their meaning.

What a fork cannot show is what happens while Python starts and imports the preloaded
modules: a test of that (test_quiet: no warning printed at import) keeps a real subprocess.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

SERVER = r"""
import atexit, importlib, io, json, os, runpy, signal, sys, threading, traceback
for name in sys.argv[1:]:
    importlib.import_module(name)
requests, replies = sys.stdin, sys.stdout
children = {}

def child(job):
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    out = os.open(job["stdout"], flags, 0o644)
    err = out if job["merge"] else os.open(job["stderr"], flags, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    # the streams (and log handlers made at import that hold them) now write to the files
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    threads = job["env"].get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))  # what a new process reads at start
    kind, target, args = job["kind"], job["target"], job["args"]
    code = 0
    try:
        if kind == "module":
            sys.argv = [target, *args]  # runpy puts the module's file in argv[0]
            sys.modules.pop(target, None)  # as `python -m`: the module runs once, as __main__
            sys.path[0] = os.getcwd()
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        elif kind == "path":
            sys.argv = [target, *args]
            sys.path[0] = os.path.dirname(os.path.abspath(target))
            runpy.run_path(target, run_name="__main__")
        else:
            sys.argv = ["-c", *args]
            sys.path[0] = ""
            exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:
            sys.stderr.write(f"{exit_.code}\n")
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:  # what the interpreter does at exit: join the threads, then the atexit functions
        threading._shutdown()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            stream.flush()
    finally:
        os._exit(code)

for line in requests:
    job = json.loads(line)
    if job["op"] == "start":
        pid = os.fork()
        if pid == 0:
            child(job)
        children[job["id"]] = pid
        reply = {"pid": pid}
    else:
        pid = children[job["id"]]
        done, status = os.waitpid(pid, 0 if job["op"] == "wait" else os.WNOHANG)
        if done == 0:
            reply = {"returncode": None}
        else:
            del children[job["id"]]
            reply = {"returncode": os.waitstatus_to_exitcode(status)}
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
"""


class Forked:
    """One run of the server: the parts of `subprocess.Popen` tests use."""

    def __init__(self, forker: Forker, ident: int, args: list[str], pid: int, out: Path,
                 err: Path | None) -> None:  # fmt: skip
        self.forker, self.ident, self.args, self.pid = forker, ident, args, pid
        self.out, self.err = out, err
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.forker._ask({"op": "poll", "id": self.ident})["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                reply = self.forker._ask({"op": "wait", "id": self.ident}, timeout)
            except subprocess.TimeoutExpired:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            self.returncode = reply["returncode"]
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def communicate(self, timeout: float | None = None) -> tuple[str, str | None]:
        """Wait for the run, then `(stdout, stderr)`; stderr is None when merged."""
        self.wait(timeout)
        out = self.out.read_text(errors="replace")
        return out, None if self.err is None else self.err.read_text(errors="replace")


class Forker:
    """A server that imports `preload` once and forks a process for each run.

    Where there is no `fork` (Windows), or with `UNET_SEG_TEST_FORK=0` in the environment
    (to compare), each run is a plain subprocess instead.

    Args:
        preload: modules the server imports before any run (a run imports the rest itself).
        env: the server's own environment (default: this process's).
    """

    def __init__(self, preload: Sequence[str] = ("unet_seg.train",),
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.preload = list(preload)
        self.env = dict(os.environ if env is None else env)
        root = str(Path(__file__).parents[1])  # the unet_seg this test session imports
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, self.env.get("PYTHONPATH")]))
        self.folder = Path(tempfile.mkdtemp(prefix="forker-"))
        self.server: subprocess.Popen | None = None
        self.count = 0
        self.pids: dict[int, int] = {}  # run -> process id, to kill one that outlives its time
        self.forks = hasattr(os, "fork") and os.environ.get("UNET_SEG_TEST_FORK", "1") != "0"

    def _start(self) -> subprocess.Popen:
        if self.server is None or self.server.poll() is not None:
            self.server = subprocess.Popen(
                [sys.executable, "-c", SERVER, *self.preload], cwd=self.folder, env=self.env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            )  # fmt: skip
        return self.server

    def _ask(self, request: dict, timeout: float | None = None) -> dict:
        """Send one request and read its reply; a run that outlives `timeout` is killed."""
        server = self._start()
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        with selectors.DefaultSelector() as selector:
            selector.register(server.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                pid = self.pids.get(request["id"])
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                server.stdout.readline()  # the killed run's status
                raise subprocess.TimeoutExpired(request.get("id"), timeout)
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server stopped (exit {server.wait()})")
        return json.loads(line)

    def popen(self, args: Sequence[str | os.PathLike], cwd: str | os.PathLike,
              env: dict[str, str] | None = None,
              merge: bool = False) -> Forked | subprocess.Popen:  # fmt: skip
        """Start `python ARGS` as a fork of the server: `args` begin with `-m MODULE`,
        `-c CODE` or a script's path, as on the command line.

        Args:
            merge: stderr goes to stdout (`stderr=subprocess.STDOUT`).
        """
        args = [str(a) for a in args]
        if not self.forks:
            return subprocess.Popen(
                [sys.executable, *args], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merge else subprocess.PIPE,
            )  # fmt: skip
        if args[0] in ("-m", "-c"):
            kind = "module" if args[0] == "-m" else "code"
            target, rest = args[1], args[2:]
        else:
            kind, target, rest = "path", args[0], args[1:]
        self.count += 1
        ident = self.count
        out = self.folder / f"{ident}.out"
        err = None if merge else self.folder / f"{ident}.err"
        request = {"op": "start", "id": ident, "kind": kind, "target": target, "args": rest,
                   "cwd": str(Path(cwd).resolve()), "env": dict(os.environ if env is None else env),
                   "stdout": str(out), "stderr": str(err or out), "merge": merge}  # fmt: skip
        pid = self._ask(request)["pid"]
        self.pids[ident] = pid
        return Forked(self, ident, [sys.executable, *args], pid, out, err)

    def run(
        self, args: Sequence[str | os.PathLike], cwd: str | os.PathLike,
        env: dict[str, str] | None = None, timeout: float = 600,
    ) -> subprocess.CompletedProcess:  # fmt: skip
        """`subprocess.run(..., capture_output=True, text=True)` for `python ARGS`."""
        proc = self.popen(args, cwd, env)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            assert self.server.stdin is not None
            self.server.stdin.close()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
