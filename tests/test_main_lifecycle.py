"""How ``python -m main`` ends: by a signal, by losing a child, by a crash loop. Real processes.

Whatever ends it, no child server may outlive main by more than 10 s, and a run that cannot go on
says once what stopped, where its log is, and how to resume it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from test_simple_bc import TRIAL_LINE, main_command, still_running_after

from apprentice.launcher import PROJECT_ROOT, ChildExited, SupervisedServer, free_port

pytestmark = pytest.mark.timeout(180)

CHILDREN_GONE_WITHIN = 10.0


@contextlib.contextmanager
def main_process(tmp_path: Path, *overrides: str, teacher: str = "scripted") -> Iterator[subprocess.Popen]:
    """``python -m main`` in its own process group (a signal to the group spares pytest), stdout and
    stderr merged; killed, with its group, if still running after the test."""
    command = main_command(tmp_path, f"mlflow.port={free_port()}", "run.num_trials=50", *overrides, teacher=teacher)
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**environment, "PYTHONUNBUFFERED": "1"}, start_new_session=True)  # fmt: skip
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def read_until_a_trial_ends(process: subprocess.Popen) -> list[str]:
    """Main's output up to its first trial line (the next trial is then starting or running)."""
    lines: list[str] = []
    while not any(TRIAL_LINE.match(line) for line in lines):
        line = process.stdout.readline()
        assert line, "main ended before its first trial:\n" + "".join(lines)
        lines.append(line)
    return lines


def setting(command: list[str], name: str) -> str:
    (value,) = [argument.partition("=")[2] for argument in command if argument.startswith(f"{name}=")]
    return value


def listening_addresses(process: psutil.Process) -> set[str]:
    return {connection.laddr.ip for connection in process.net_connections() if connection.status == psutil.CONN_LISTEN}


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


KILLS = {
    "SIGTERM to main's process group": lambda pid: os.killpg(pid, signal.SIGTERM),
    "SIGTERM to main alone": lambda pid: os.kill(pid, signal.SIGTERM),
    "SIGKILL of main alone": lambda pid: os.kill(pid, signal.SIGKILL),
}
CASES = [("scripted", kill) for kill in KILLS] + [("human", "SIGTERM to main's process group"), ("human", "SIGKILL of main alone")]


@pytest.mark.parametrize(("teacher", "kill"), CASES)
def test_no_child_outlives_main_whatever_signal_ends_it(tmp_path, teacher, kill):
    web = ["++web.wait_for_teacher=false", f"web.port={free_port()}", "web.steps_per_second=0"] if teacher == "human" else []
    with main_process(tmp_path, *web, teacher=teacher) as process:
        command = process.args
        read_until_a_trial_ends(process)
        children = psutil.Process(process.pid).children(recursive=True)
        names = {" ".join(child.cmdline()[1:3]) for child in children}
        expected = {"-m apprentice.services", "-m apprentice.components"} | ({"-m web"} if teacher == "human" else set())
        assert expected <= names, names
        for child in children:  # nothing exposed: every server listens on loopback only
            assert listening_addresses(child) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, (child.cmdline(), listening_addresses(child))

        KILLS[kill](process.pid)
        alive = still_running_after(children, timeout=CHILDREN_GONE_WITHIN)
        assert not alive, f"still running {CHILDREN_GONE_WITHIN:g} s after {kill}: {alive}"
        if kill != "SIGKILL of main alone":  # main stopped its children itself, then exited
            assert process.wait(timeout=30) == 128 + signal.SIGTERM
    ports = [int(setting(command, "services.port")), int(setting(command, "services.components_port"))]
    ports += [int(setting(command, "web.port"))] if teacher == "human" else []
    assert all(port_is_free(port) for port in ports), ports


def test_losing_the_services_mid_run_ends_main_with_one_message_and_the_resume_command(tmp_path):
    with main_process(tmp_path, "run_id=lost-services") as process:
        lines = read_until_a_trial_ends(process)
        (services,) = [child for child in psutil.Process(process.pid).children() if "apprentice.services" in child.cmdline()]
        services.kill()
        output, _ = process.communicate(timeout=60)
    output = "".join(lines) + output
    assert process.returncode == 1, output[-4000:]
    assert "Traceback" not in output and "AioRpcError" not in output, output[-4000:]
    assert output.count("The Cogment services stopped") == 1, output[-4000:]
    assert f"see {tmp_path / 'outputs' / 'services.log'}" in output
    assert "Every sample stored so far is safe in the trial datastore" in output
    (resume,) = [line.strip() for line in output.splitlines() if line.strip().startswith("python -m main ")]
    assert resume.endswith(" resume=lost-services") and "+experiment=simple_bc/mountain_car teacher=scripted" in resume
    assert "run_id=" not in resume


def test_components_that_cannot_start_again_end_the_run_with_a_message(tmp_path):
    with main_process(tmp_path, "run_id=no-restart") as process:
        lines = read_until_a_trial_ends(process)
        port = int(setting(process.args, "services.components_port"))
        (components,) = [child for child in psutil.Process(process.pid).children() if "apprentice.components" in child.cmdline()]
        components.kill()
        components.wait(10)
        with socket.socket() as squatter:  # takes the components' port before their restart binds it
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            output, _ = process.communicate(timeout=90)
    output = "".join(lines) + output
    assert process.returncode == 1, output[-4000:]
    assert "The components exited (code -9) and could not be started again" in output, output[-4000:]
    assert f"Cannot listen on 127.0.0.1:{port}: the port is in use" in output
    assert str(tmp_path / "outputs" / "components.log") in output
    assert re.search(r"^  python -m main .* resume=no-restart$", output, re.MULTILINE), output[-2000:]


def test_supervision_gives_up_on_a_child_that_keeps_dying(tmp_path):
    """A crash loop: the child exits right after its ready line, every time."""
    dies_at_once = ["-c", "print('ready on grpc://127.0.0.1:1', flush=True)"]
    server = SupervisedServer("crashing server", dies_at_once, tmp_path / "crash.log", max_restarts=3, window=60.0)
    with pytest.raises(ChildExited) as stopped:
        asyncio.run(asyncio.wait_for(server.watch(period=0.05), timeout=60))
    assert len(server.restart_times) == 3
    assert str(stopped.value) == f"The crashing server exited (code 0) 4 times within 60 s: not starting them again; see {tmp_path / 'crash.log'}"
    assert server.process.poll() is not None

