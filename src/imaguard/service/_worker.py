"""The worker process: loads the config, builds the Guard, runs the Enforcer, serves status.

Started by the supervisor as ``python -m imaguard.service._worker`` with the fanotify group fd
and a channel to the supervisor inherited. SIGHUP re-reads the config and builds a new Guard;
if anything fails, the old one stays in force and the error names the key at fault (a
reload never denies everything meanwhile). SIGTERM drains and stops.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading

from imaguard.errors import Error
from imaguard.service._build import build_guard
from imaguard.service._config import load_config
from imaguard.service._server import ControlServer
from imaguard.service._service import Service, close_quietly

__all__ = ["main"]

# Not __name__: run with -m, this module is __main__, outside the "imaguard" logger tree.
_log = logging.getLogger("imaguard.service.worker")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="imaguard-worker")
    p.add_argument("--config", default=None)
    p.add_argument("--permissive", action="store_true")
    p.add_argument("--group-fd", type=int, required=True)
    p.add_argument("--channel-fd", type=int, required=True)
    p.add_argument("--supervisor-pid", type=int, required=True)
    p.add_argument("--restarts", type=int, default=0)
    p.add_argument("--gap-ms", type=float, default=None)
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("imaguard-worker[%(process)d]: %(levelname)s: %(message)s")
    )
    root = logging.getLogger("imaguard")
    root.handlers[:] = [handler]
    root.setLevel(args.log_level)

    # Signal handlers only set plain flags: an Event (its lock) taken in a handler can
    # deadlock when the signal lands while the main thread holds that very lock. The main
    # loop wakes on the wakeup fd (signals) or on a byte other threads send (poke).
    flags = {"hup": False, "stop": False}
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)

    def on_hup(*_: object) -> None:
        flags["hup"] = True

    def on_term(*_: object) -> None:
        flags["stop"] = True

    def poke() -> None:
        with contextlib.suppress(OSError):
            wake_w.send(b"\0")

    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    channel = socket.socket(fileno=args.channel_fd)

    def send(word: str) -> None:
        with contextlib.suppress(OSError):
            channel.send(word.encode()[:4000])

    try:
        cfg = load_config(args.config)
        if args.permissive:
            cfg = cfg.with_mode("permissive")
        guard = build_guard(cfg)
    except Error as e:
        _log.error("%s", e)
        send(f"fatal {e}")
        return 78
    from imaguard.enforce import DEFAULT_INTERPRETERS, Enforcer, FanotifyGroup

    try:
        group = FanotifyGroup.adopt(args.group_fd)
        enforcer = Enforcer(
            group,
            guard,
            permissive=cfg.permissive,
            interpreters=cfg.interpreters if cfg.interpreters is not None else DEFAULT_INTERPRETERS,
            workers=cfg.workers,
            queue_limit=cfg.queue_limit,
            open_marks=cfg.cache_opens,
            own_pids=(args.supervisor_pid,),
            inflight_path=os.path.join(cfg.state, "inflight"),
        )
        recovered = enforcer.recover_inflight()
        if recovered:
            _log.warning("%d access(es) left unanswered by the previous worker: denied", recovered)
        service = Service(
            cfg,
            args.config,
            guard,
            enforcer,
            permissive_flag=args.permissive,
            supervisor_pid=args.supervisor_pid,
            restarts=args.restarts,
            gap_ms=args.gap_ms,
            recovered=recovered,
            notify=send,
        )
        enforcer.on_decision = service.on_decision
        server = ControlServer(
            cfg.socket,
            service.handle,
            mode=cfg.socket_mode,
            max_clients=cfg.max_clients,
            max_per_uid=cfg.max_clients_per_uid,
        )
    except (Error, OSError) as e:
        _log.error("%s", e)
        send(f"fatal {e}")
        guard.close()
        return 78
    server.start()
    send("loaded")
    try:
        go = channel.recv(64)
    except OSError:
        go = b""
    if go != b"go":
        _log.error("the supervisor is gone before the start; stopping")
        server.close()
        guard.close()
        return 1
    stop = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            enforcer.run(stop)
        except BaseException as e:  # a dead decision loop must end the process: restart
            failed.append(e)
            _log.exception("the enforcer stopped: %s", e)
        finally:
            poke()

    runner = threading.Thread(target=run, name="imaguard-enforcer")
    runner.start()
    service.ready = True
    send("running")
    _log.info(
        "enforcing (mode %s) on %s; status on %s", service.mode, ", ".join(cfg.watch), cfg.socket
    )

    def watch_channel() -> None:
        while True:
            try:
                data = channel.recv(64)
            except OSError:
                data = b""
            if not data:
                _log.error("the supervisor is gone; stopping")
                flags["stop"] = True
                poke()
                return
            word, _, rest = data.decode(errors="replace").partition(" ")
            if word == "gap":
                with contextlib.suppress(ValueError):
                    service.gap_ms = float(rest)

    threading.Thread(target=watch_channel, name="imaguard-channel", daemon=True).start()
    while not flags["stop"] and runner.is_alive():
        select.select([wake_r], [], [], 1.0)
        with contextlib.suppress(OSError):
            while wake_r.recv(256):
                pass
        if flags["hup"]:
            flags["hup"] = False
            service.reload()
    service.ready = False
    stop.set()
    runner.join(timeout=30)
    server.close()
    close_quietly(service.guard)
    return 70 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
