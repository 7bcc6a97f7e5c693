"""The main job end to end: ``python -m main +experiment=simple_bc/mountain_car teacher=scripted``.

Real processes throughout: main starts the Cogment services and the components as children, the
scripted teacher plays the teacher's part, metrics go to MLflow (a real server or its SQLite store).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cogment
import psutil
import pytest
from conftest import start_services_process
from omegaconf import OmegaConf

from actors.simple_bc import SimpleBCModel, SimpleBCTraining, TrialSummary
from apprentice import cog_settings
from apprentice.launcher import PROJECT_ROOT, free_port, start_python
from apprentice.run import Endpoints, RunSession

pytestmark = pytest.mark.timeout(300)

TRIAL_LINE = re.compile(r"^trial\s+(\d+)\s+steps\s+(\d+)\s+return\s+(\S+)\s+intervention\s+([\d.]+)%\s+iteration\s+(\d+)")
RESULT_LINE = re.compile(r"success rate alone (\d+)% over (\d+) episodes")


def main_command(tmp_path: Path, *overrides: str, experiment: str = "simple_bc/mountain_car", teacher: str = "scripted") -> list[str]:
    return [
        sys.executable, "-m", "main", f"+experiment={experiment}", f"teacher={teacher}",
        f"data_dir={tmp_path / 'data'}", f"services.port={free_port()}", f"services.components_port={free_port()}",
        f"hydra.run.dir={tmp_path / 'outputs'}", *overrides,
    ]


def run_main(tmp_path: Path, *overrides: str, mlflow_port: int | None = None, **choices: str) -> str:
    # Nothing listens on mlflow.port unless a test starts simple_mlflow: the run then writes the
    # local store in the test's data dir, never the developer's.
    command = main_command(tmp_path, f"mlflow.port={mlflow_port or free_port()}", *overrides, **choices)
    environment = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    finished = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240, env=environment)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-5000:]
    return finished.stdout


@contextlib.contextmanager
def running_main(tmp_path: Path, *overrides: str, stderr=subprocess.DEVNULL) -> Iterator[subprocess.Popen]:
    """The main job in the background, its stdout readable line by line; killed if still running after."""
    command = main_command(tmp_path, f"mlflow.port={free_port()}", *overrides)
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def still_running_after(processes: list[psutil.Process], timeout: float) -> list[list[str]]:
    """The command lines of ``processes`` still running ``timeout`` s from now (a zombie has exited)."""

    def running(process: psutil.Process) -> bool:
        try:
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    while any(map(running, processes)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [process.cmdline() for process in processes if running(process)]


def trial_lines(output: str) -> list[tuple[int, int, float, float, int]]:
    return [
        (int(m[1]), int(m[2]), float(m[3]), float(m[4]), int(m[5]))
        for m in map(TRIAL_LINE.match, output.splitlines())
        if m
    ]


def read_metrics(tracking_uri: str) -> dict[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "apprentice"]
    (run,) = client.search_runs([experiment.experiment_id])
    return {key: client.get_metric_history(run.info.run_id, key) for key in run.data.metrics}, run.data.params


def test_the_agent_learns_from_a_scripted_teacher_within_five_trials(tmp_path):
    output = run_main(tmp_path, "run.num_trials=5")
    trials = trial_lines(output)
    assert [trial[0] for trial in trials] == [1, 2, 3, 4, 5], output
    first_rate, last_rate = trials[0][3], trials[-1][3]
    assert last_rate <= first_rate / 5, f"intervention rate {first_rate}% -> {last_rate}%"
    success = RESULT_LINE.search(output)
    assert success and int(success[2]) == 50, output
    assert int(success[1]) >= 90, output
    assert trials[-1][4] > 1, "new model iterations were published"

    metrics, params = read_metrics(f"sqlite:///{tmp_path / 'data' / 'mlflow' / 'mlflow.db'}")
    for key in ("loss", "total_samples", "model_iteration", "intervention_rate", "trial_return", "teacher_seconds", "eval_success_rate"):
        assert metrics.get(key), f"metric {key} missing: {sorted(metrics)}"
    assert len(metrics["intervention_rate"]) == 5
    assert [m.value for m in metrics["model_iteration"]] == sorted(m.value for m in metrics["model_iteration"])
    assert params["train_only_from_demonstration"] == "False" and params["approval_weight"] == "1.0"


def test_metrics_reach_a_running_simple_mlflow_server(tmp_path):
    port = free_port()
    server = start_python("simple_mlflow", ["-m", "simple_mlflow", "--port", str(port), "--data-dir", str(tmp_path / "data")], tmp_path / "mlflow.log")
    try:
        run_main(tmp_path, "run.num_trials=1", "run.evaluate_every=1", mlflow_port=port)
        metrics, _params = read_metrics(f"http://127.0.0.1:{port}")
    finally:
        server.stop()
    assert metrics["loss"] and metrics["trial_return"] and metrics["eval_success_rate"]


def test_resume_after_the_run_process_is_killed_keeps_every_stored_sample(tmp_path):
    with running_main(tmp_path, "run.num_trials=50", "run_id=killed-run") as process:
        seen = []
        deadline = time.monotonic() + 120
        while len(seen) < 2 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            seen += trial_lines(line)
        assert len(seen) == 2, "the run never reported two trials"
        children = psutil.Process(process.pid).children()
        process.send_signal(signal.SIGKILL)  # no clean-up from the run itself
        process.wait(30)
    # The services, orphaned, end their trials and flush (SIGTERM from the dying parent), then exit.
    alive = still_running_after(children, timeout=30)
    assert not alive, alive

    output = run_main(tmp_path, "run.num_trials=1", "resume=killed-run")
    resumed = re.search(r"Resuming run killed-run at iteration (\d+) with (\d+) stored samples", output)
    assert resumed, output
    steps_of_finished_trials = sum(trial[1] for trial in seen)
    assert int(resumed[2]) >= steps_of_finished_trials, (resumed[0], seen)
    assert int(resumed[1]) >= 1
    (resumed_trial,) = trial_lines(output)
    assert resumed_trial[0] >= 3, "the resumed run goes on after the trials already stored"

    # The run's last iteration carries its totals, the trials before the crash included (the web
    # page's end-of-run summary shows them).
    totals = asyncio.run(final_iteration_figures(tmp_path / "data", "killed-run"))
    assert totals["run_finished"] == "true"
    assert int(totals["trials"]) == resumed_trial[0]
    assert int(totals["samples"]) == int(resumed[2]) + resumed_trial[1]
    assert 0 <= int(totals["demonstrations"]) <= int(totals["samples"])


async def final_iteration_figures(data_dir: Path, model_id: str) -> dict[str, str]:
    """The user data of the model's latest iteration, read from the services' data dir after main."""
    services = start_services_process(data_dir, data_dir.parent / "services-after-main.log")
    try:
        context = cogment.Context(user_id="test", cog_settings=cog_settings)
        registry = await context.get_model_registry_v2(cogment.Endpoint(services.endpoint))
        return dict((await registry.get_iteration_info(model_id, -1)).properties)
    finally:
        services.stop()


def test_a_crashed_actor_service_ends_its_trial_and_the_run_goes_on(tmp_path):
    with running_main(tmp_path, "run.num_trials=6", "run.eval_episodes=5", stderr=subprocess.STDOUT) as process:
        lines = []
        while not any(TRIAL_LINE.match(line) for line in lines):
            line = process.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        (components,) = [child for child in psutil.Process(process.pid).children()
                         if "apprentice.components" in " ".join(child.cmdline())]
        components.kill()  # the environment and actor services crash
        output, _ = process.communicate(timeout=180)
    output = "".join(lines) + output
    assert process.returncode == 0, output[-4000:]
    assert "components exited" in output and "starting it again" in output, output[-4000:]
    trials = trial_lines(output)
    assert [trial[0] for trial in trials] == [1, 2, 3, 4, 5, 6], output[-4000:]
    failed = [trial for trial in trials if trial[1] == 0]
    assert len(failed) <= 1, f"only the trial the crash hit may fail; the others ran on the restarted components: {trials}"
    ended_early = [int(line.split()[1]) for line in output.splitlines() if TRIAL_LINE.match(line) and "  ended early: " in line]
    assert len(ended_early) <= 1 and {trial[0] for trial in failed} <= set(ended_early), output[-4000:]
    assert RESULT_LINE.search(output)


@pytest.mark.parametrize(("experiment", "env_id"), [("simple_bc/cartpole", "CartPole-v1"), ("simple_bc/acrobot", "Acrobot-v1"), ("simple_bc/lunar_lander", "LunarLander-v3")])
def test_the_other_experiments_run_with_the_page_as_their_teacher(tmp_path, experiment, env_id):
    """Nobody at the page: the page plays NO-OP, approving the agent, and the run ends by itself."""
    overrides = ["run.num_trials=1", "run.eval_episodes=3", f"web.port={free_port()}", "web.steps_per_second=0", "web.stay_open_after_run=false", "web.wait_for_teacher=false"]
    output = run_main(tmp_path, *overrides, experiment=experiment, teacher="human")
    ((trial, steps, _return, intervention, _iteration),) = trial_lines(output)
    assert trial == 1 and steps > 0 and intervention == 0.0, output
    assert RESULT_LINE.search(output)[2] == "3"
    assert f"({env_id}): {steps} steps" in (tmp_path / "outputs" / "components.log").read_text()


BAD_SETTINGS = [  # {port} is a busy port, {file} a file
    ("run.eval_success=sometimes", "run.eval_success is 'sometimes': use terminated, truncated or return>=NUMBER"),
    ("run.env_id=NoSuchGame-v0", "run.env_id='NoSuchGame-v0': gymnasium cannot make it"),
    ("run.env_id=Pendulum-v1", "teacher=scripted: the scripted teacher only knows MountainCar-v0, not run.env_id='Pendulum-v1'; teach this environment in the browser with teacher=human"),
    ("run.learning_rate=0", "run.learning_rate=0: it must be a number > 0; give one, e.g. run.learning_rate=0.001"),
    ("run.learning_rate=-0.01", "run.learning_rate=-0.01: it must be a number > 0"),
    ("run.learning_rate=fast", "run.learning_rate='fast': it must be a number > 0"),
    ("run.num_trials=0", "run.num_trials=0: it must be an integer >= 1; give one, e.g. run.num_trials=5"),
    ("run.num_trials=-2", "run.num_trials=-2: it must be an integer >= 1"),
    ("services.components_port={port}", "services.components_port={port}: cannot listen on 127.0.0.1:{port} (the port is in use); choose another port with services.components_port=PORT"),
    ("data_dir={file}/data", "data_dir={file}/data: cannot write there (Not a directory); give a writable directory with data_dir=PATH"),
]


@pytest.mark.parametrize(("override", "message"), BAD_SETTINGS, ids=[override for override, _ in BAD_SETTINGS])
def test_a_bad_run_setting_stops_main_before_anything_starts(tmp_path, override, message):
    """One line naming the setting, the problem and the fix, and no child started (no child's log)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values = {"port": busy.getsockname()[1], "file": a_file}
        command = main_command(tmp_path, override.format(**values))
        finished = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert finished.returncode == 1, finished.stderr
    assert message.format(**values) in finished.stderr
    assert len(finished.stderr.strip().splitlines()) == 1, finished.stderr
    assert "Run " not in finished.stdout
    assert sorted(path.name for path in (tmp_path / "outputs").iterdir()) == [".hydra", "main.log"]  # no child's log


async def test_a_trial_cut_short_is_told_from_a_finished_one(services, tmp_path):
    """The first trial plays to the episode's end; the second, whose client teacher never joins, is
    hard-terminated (as a crash would end it): only its summary says it ended early."""
    components = start_python(
        "components",
        ["-m", "apprentice.components", "--port", "0", "--model-registry", services.endpoint,
         "--environment", "gym=environments.gym_environment.GymEnvironment", "--actor", "simple_bc=actors.simple_bc.SimpleBCActor",
         "--actor", "scripted_teacher=actors.scripted_teacher.ScriptedTeacher"],
        tmp_path / "components.log",
    )  # fmt: skip
    try:
        settings = {"env_id": "MountainCar-v0", "seed": 0, "num_trials": 2, "player": {"implementation": "simple_bc"}, "hidden_sizes": [8],
                    "learning_rate": 0.001, "batch_size": 32, "publish_every": 100, "evaluate_every": 5, "approval_weight": 1.0}  # fmt: skip
        finishing = SimpleBCTraining(OmegaConf.create({**settings, "teacher": {"implementation": "scripted_teacher"}}))
        never_joined = SimpleBCTraining(OmegaConf.create({**settings, "teacher": {"implementation": "client"}}))
        endpoints = Endpoints(services.endpoint, services.endpoint, services.endpoint, (components.endpoint,))
        context = cogment.Context(user_id="test", cog_settings=cog_settings)
        session = await RunSession("cut-short", finishing.cfg, endpoints, context, metrics=None).open()
        await SimpleBCModel("cut-short", finishing.environment_specs, [8]).store(session.model_registry)

        async def producer(producer_session):
            if producer_session.trial_index == 1:  # PENDING: its teacher's page is not there
                await session.controller.terminate_trial([producer_session.trial_id], hard=True)
            await finishing.sample_producer(producer_session)

        trials = [("cut-short-0", finishing.trial_parameters(session, 0)), ("cut-short-1", never_joined.trial_parameters(session, 1))]
        summaries = [sample async for _, _, _, sample in session.start_and_await_trials(trials, producer) if isinstance(sample, TrialSummary)]
    finally:
        components.stop()
    assert [(summary.trial_index, summary.ended_early()) for summary in summaries] == [(0, False), (1, True)]
    assert summaries[0].steps > 0 and summaries[1].steps == 0
