"""The teacher's web page in a real browser, through real services.

Real processes on free ports: the Cogment services, the components (MountainCar environment and
the simple_bc player with an untrained published model) and ``python -m web``. Each test opens
the page in Debian's Chromium (Playwright), starts a trial with the run's own trial parameters
(``SimpleBCTraining.trial_parameters``, human teacher) through the SDK controller, and checks what
the trial datastore holds once the trial has ended. Tests of the server's own lifecycle and limits
start a ``python -m web`` of their own, on the same services, playing the trials of another run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import cogment
import gymnasium
import pytest
import torch
from conftest import start_services_process
from omegaconf import OmegaConf

from actors.simple_bc import SimpleBCModel, SimpleBCTraining
from apprentice import cog_settings
from apprentice.launcher import PROJECT_ROOT, ChildServer, start_python
from apprentice.protos.data_pb2 import PlayerAction
from apprentice.run import Endpoints, RunSession
from apprentice.spaces import array_from_tensor, environment_specs, is_noop
from apprentice.teaching import decide

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
RUN_ID = "web-test"
ENV_ID = "MountainCar-v0"
STEPS_PER_SECOND = 30
MAX_STEPS = 200  # MountainCar-v0 truncates there; the tests' agent never reaches the flag (publish_untrained_model)
PUSH_RIGHT = 2
SCREENSHOT = PROJECT_ROOT / "docs" / "screenshot.png"
TRIAL_INDEXES = itertools.count()
ALLOWED_HOST = "teacher.lan"  # web.allowed_hosts of the stack's web server
# The run's own settings (``make run``), so that the trials are the run's own: the experiment's
# run section over the learner's defaults (config/learner/asking.yaml), as Hydra composes them.
RUN_CONFIG = OmegaConf.merge(
    OmegaConf.load(PROJECT_ROOT / "config" / "learner" / "asking.yaml"),
    OmegaConf.load(PROJECT_ROOT / "config" / "experiment" / "simple_bc" / "mountain_car.yaml").run,
)
# An agent of 5 networks asks wherever they disagree at all: with random weights, at every step.
ASKS_AT_EVERY_STEP = {"ensemble_size": 5, "help": {"mode": "ask", "threshold": 0.0}}
HELP_STEPS_PER_SECOND = 5

pytestmark = pytest.mark.timeout(300)
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: apt-get install -y chromium")


@dataclass
class Stack:
    services: ChildServer
    components: ChildServer
    web: ChildServer
    log_dir: Path

    @property
    def url(self) -> str:
        return page_url(self.web)

    @property
    def endpoints(self) -> Endpoints:
        endpoint = self.services.endpoint
        return Endpoints(endpoint, endpoint, endpoint, (self.components.endpoint,))

    def stats(self) -> dict:
        return web_stats(self.web)

    def environment_steps(self, trial_id: str) -> int | None:
        """What the environment logged when the trial ended (``None`` while it has not)."""
        match = re.search(rf"Trial {re.escape(trial_id)} \([^)]*\): (\d+) steps", (self.log_dir / "components.log").read_text())
        return int(match[1]) if match else None


def page_url(web: ChildServer) -> str:
    return f"http://127.0.0.1:{web.port}/"


def web_stats(web: ChildServer) -> dict:
    with urlopen(page_url(web) + "api/stats", timeout=5) as response:
        return json.load(response)


async def wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it is true; fail, saying ``what`` was awaited, after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not the case after {timeout:g} s: {what}"
        await asyncio.sleep(0.1)


def start_web(services: ChildServer, log_path: Path, *args: str) -> ChildServer:
    """``python -m web`` on a free port, on ``services``, at the tests' pace."""
    web_args = ["--port", "0", "--orchestrator", services.endpoint, "--steps-per-second", str(STEPS_PER_SECOND), *args]
    return start_python("web", ["-m", "web", *web_args], log_path)


@contextlib.contextmanager
def own_web(stack: Stack, run_id: str, *args: str) -> Iterator[ChildServer]:
    """A web server of the test's own, playing the trials of ``run_id`` (the stack's one plays ``RUN_ID``)."""
    web = start_web(stack.services, stack.log_dir / f"{run_id}.log", "--run-id", run_id, *args)
    try:
        yield web
    finally:
        web.stop()


def model_id_for(env_id: str) -> str:
    """The run's model plays MountainCar; the other environments' trials use a model of their own."""
    return RUN_ID if env_id == ENV_ID else f"{RUN_ID}-{env_id}"


async def publish_untrained_model(model_registry_endpoint: str, env_id: str = ENV_ID, **metrics) -> SimpleBCModel:
    context = cogment.Context(user_id="web-test", cog_settings=cog_settings)
    registry = await context.get_model_registry_v2(cogment.Endpoint(model_registry_endpoint))
    model = SimpleBCModel(model_id_for(env_id), environment_specs(env_id), [64, 64])
    # Its output layer zeroed, the agent always plays action 0 (on MountainCar, push left, which never
    # reaches the flag): random weights may happen to swing the car up to the flag before MAX_STEPS.
    torch.nn.init.zeros_(model.network.weights[-1])
    torch.nn.init.zeros_(model.network.biases[-1])
    await model.store(registry, **metrics)
    return model


async def publish_asking_model(model_registry_endpoint: str, model_id: str, **metrics) -> SimpleBCModel:
    """An ensemble of 5 random networks: they disagree a little everywhere (its uncertainty is > 0).

    Its consensus may push either way; within the tests' 60 steps MountainCar never reaches the flag.
    """
    context = cogment.Context(user_id="web-test", cog_settings=cog_settings)
    registry = await context.get_model_registry_v2(cogment.Endpoint(model_registry_endpoint))
    model = SimpleBCModel(model_id, environment_specs(ENV_ID), [64, 64], ensemble_size=5)
    await model.store(registry, **metrics)
    return model


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web")
    started: list[ChildServer] = []
    try:
        services = start_services_process(tmp / "data", tmp / "services.log")
        started.append(services)
        components_args = [
            "--port", "0", "--model-registry", services.endpoint,
            "--environment", "gym=environments.gym_environment.GymEnvironment",
            "--actor", "simple_bc=actors.simple_bc.SimpleBCActor",
        ]
        started.append(start_python("components", ["-m", "apprentice.components", *components_args], tmp / "components.log"))
        web_args = ["--model-registry", services.endpoint, "--run-id", RUN_ID, f"--allowed-host={ALLOWED_HOST}"]
        started.append(start_web(services, tmp / "web.log", *web_args))
        asyncio.run(publish_untrained_model(services.endpoint))
        yield Stack(*started, log_dir=tmp)
    finally:
        for child in reversed(started):
            child.stop()


# --- trials -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredStep:
    """One tick of a trial as the datastore holds it."""

    player: PlayerAction
    teacher: PlayerAction | None  # None: the teacher did not act (NO-OP)
    timestamp: float  # seconds


class Trials:
    """Starts trials of the run with the run's own parameters, and reads them back from the datastore.

    ``run`` overrides the run's settings (e.g. an agent that asks for help); ``model_id`` is the
    model the player plays (by default the run's, or a model of its own for other environments).
    """

    def __init__(self, stack: Stack, run_id: str = RUN_ID, web_page: str | None = None, run: dict | None = None,
                 model_id: str | None = None) -> None:
        self.stack = stack
        self.run_id = run_id
        self.run = run or {}
        self.model_id = model_id
        self.context = cogment.Context(user_id="web-test", cog_settings=cog_settings)
        endpoints = dataclasses.replace(stack.endpoints, web_page=web_page)
        self.session = RunSession(run_id, None, endpoints, self.context, metrics=None)

    def parameters(self, env_id: str = ENV_ID, max_steps: int = 0) -> tuple[str, cogment.TrialParameters]:
        """A new trial's id and parameters: the run's own, with the run's model playing."""
        index = next(TRIAL_INDEXES)  # the tests share the services: trials one after another
        trial_id = f"{self.run_id}-trial-{index}"
        cfg = OmegaConf.merge(RUN_CONFIG, self.run, {"env_id": env_id, "resume": None, "teacher": {"implementation": "client"}})
        params = SimpleBCTraining(cfg).trial_parameters(self.session, index)
        params.max_steps = max_steps
        for actor in params.actors:
            config = actor.config
            config.model_id = self.model_id or model_id_for(env_id)
            actor.config = config
        return trial_id, params

    async def start(self, env_id: str = ENV_ID, max_steps: int = 0) -> str:
        trial_id, params = self.parameters(env_id, max_steps)
        assert await self.session.controller.start_trial(trial_id_requested=trial_id, trial_params=params)
        return trial_id

    async def state(self, trial_id: str) -> cogment.TrialState:
        (info,) = await self.session.controller.get_trial_info([trial_id])
        return info.state

    async def stored_samples(self, trial_id: str) -> int:
        (info,) = await self.session.datastore.get_trials([trial_id])
        return info.sample_count

    async def wait_ended(self, trial_id: str, timeout: float = 60.0) -> int:
        """Steps the environment played; fails unless the trial ends by itself within ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (steps := self.stack.environment_steps(trial_id)) is None:
            assert asyncio.get_running_loop().time() < deadline, f"trial {trial_id} did not end within {timeout:g} s"
            await asyncio.sleep(0.2)
        return steps

    async def teacher_actions(self, trial_id: str) -> list[int | None]:
        """The teacher's action at each tick (None: NO-OP), from the datastore, final tick left out."""
        return [None if is_noop(step.teacher) else int(array_from_tensor(step.teacher.value)) for step in await self.steps(trial_id)]

    async def steps(self, trial_id: str) -> list[StoredStep]:
        """Each tick's actions, from the datastore, final tick left out."""
        datastore = self.context.get_datastore(cogment.Endpoint(self.stack.services.endpoint))
        deadline = time.monotonic() + 30
        # The datastore has the last samples a moment after the trial ends.
        while not ((infos := await datastore.get_trials([trial_id])) and infos[0].trial_state == cogment.TrialState.ENDED):
            assert time.monotonic() < deadline, f"trial {trial_id} is not ENDED in the datastore after 30 s"
            await asyncio.sleep(0.1)
        steps = []
        async for sample in datastore.all_samples(infos):
            player, teacher = sample.actors_data["player"], sample.actors_data["teacher"]
            if is_noop(player.action):
                continue  # the final observation
            steps.append(StoredStep(player.action, teacher.action, sample.timestamp / 1e9))
        return steps


@pytest.fixture
async def trials(stack: Stack) -> Trials:
    return Trials(stack)  # the SDK's Context must be made in the test's event loop


# --- the browser ----------------------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


# Counts the frames the page draws on its canvas (the page's own code runs unchanged).
COUNT_DRAWS = """
window.__draws = 0;
const drawImage = CanvasRenderingContext2D.prototype.drawImage;
CanvasRenderingContext2D.prototype.drawImage = function (...args) {
  if (this.canvas.id === "frame") window.__draws += 1;
  return drawImage.apply(this, args);
};
"""


async def open_page(browser, stack: Stack, expected_role: str, init_script: str | None = None, url: str | None = None):
    """A new tab (own context: own sessionStorage) on the page (the stack's, or ``url``), once the server has given it a role."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    if init_script:
        await context.add_init_script(init_script)
    page = await context.new_page()
    await page.goto(url or stack.url)
    await page.wait_for_function("(role) => document.getElementById('role').dataset.role === role", arg=expected_role)
    return page


async def displayed_step(page) -> int:
    text = await page.text_content("#step")
    return int(text) if text and text.isdigit() else -1


async def wait_step(page, at_least: int, timeout: float = 30_000) -> int:
    await page.wait_for_function("(n) => Number(document.getElementById('step').textContent) >= n", arg=at_least, timeout=timeout)
    return await displayed_step(page)


def runs_of(actions: list[int | None], value: int) -> list[tuple[int, int]]:
    """The [first, last] tick ranges where ``actions`` equals ``value``."""
    ranges, start = [], None
    for tick, action in enumerate([*actions, object()]):
        if action == value and start is None:
            start = tick
        elif action != value and start is not None:
            ranges.append((start, tick - 1))
            start = None
    return ranges


# --- tests ------------------------------------------------------------------------------------------------


@needs_chromium
async def test_holding_right_demonstrates_push_right_and_releasing_approves(stack, trials, browser):
    page = await open_page(browser, stack, "teacher")
    trial_id = await trials.start()
    await wait_step(page, 20)

    pressed_at = await displayed_step(page)  # read first: the key acts from about this step on
    await page.keyboard.down("ArrowRight")
    await wait_step(page, pressed_at + 20)
    released_at = await wait_step(page, pressed_at + 40)
    assert await page.text_content("#last-actor") == "Teacher"  # before the release: it acts at once
    await page.keyboard.up("ArrowRight")
    await wait_step(page, released_at + 40)
    assert await page.text_content("#last-actor") == "Agent"

    steps = await trials.wait_ended(trial_id)
    assert steps == MAX_STEPS
    actions = await trials.teacher_actions(trial_id)
    assert len(actions) == steps
    (held,) = runs_of(actions, PUSH_RIGHT)
    # The page shows step s while the teacher's action for tick s is still being paced, so the key
    # press or release applies from about the step on screen; a few steps later is transport and a busy 2-core
    # machine (bench/web_latency.py measures the latency itself).
    tolerance = 5
    assert pressed_at - 1 <= held[0] <= pressed_at + tolerance, (held, pressed_at, released_at)
    assert released_at - 1 <= held[1] <= released_at + tolerance, (held, pressed_at, released_at)
    assert held[1] - held[0] + 1 >= 40 - tolerance
    assert all(action in (None, PUSH_RIGHT) for action in actions), "only ArrowRight was ever pressed"
    approvals_after = actions[held[1] + 1 :]
    assert len(approvals_after) >= 40 and all(action is None for action in approvals_after)
    await page.context.close()


@needs_chromium
async def test_pause_stops_the_trial_and_resume_goes_on(stack, trials, browser):
    page = await open_page(browser, stack, "teacher")
    trial_id = await trials.start()
    await wait_step(page, 10)
    await page.keyboard.press("p")
    await page.wait_for_function("document.getElementById('overlay-title').textContent === 'Paused'", timeout=5000)
    paused_at = await displayed_step(page)
    await asyncio.sleep(1.0)  # the scenario, not a wait: 30 steps at the page's pace, had it not paused
    assert await displayed_step(page) <= paused_at + 1
    await page.keyboard.press("p")
    await wait_step(page, paused_at + 10)
    assert await trials.wait_ended(trial_id) == MAX_STEPS
    await page.context.close()


@needs_chromium
async def test_a_second_tab_is_a_read_only_observer(stack, trials, browser):
    teacher = await open_page(browser, stack, "teacher")
    observer = await open_page(browser, stack, "observer")
    assert await observer.text_content("#role") == "Observer · read-only"
    assert await observer.is_visible("#observer-note")
    assert await observer.is_disabled("#pause")
    assert await teacher.text_content("#role") == "You are the teacher"

    trial_id = await trials.start()
    await wait_step(observer, 10)
    assert await observer.locator("#action-buttons button").count() == 3
    assert await observer.locator("#action-buttons button").first.is_disabled()
    assert not await teacher.locator("#action-buttons button").first.is_disabled()
    await observer.keyboard.down("ArrowRight")  # the observer's keys do nothing
    await wait_step(observer, await displayed_step(observer) + 30)
    await observer.keyboard.up("ArrowRight")
    assert await trials.wait_ended(trial_id) == MAX_STEPS
    assert all(action is None for action in await trials.teacher_actions(trial_id))
    await teacher.context.close()
    await observer.context.close()


@needs_chromium
async def test_closing_the_teacher_tab_mid_trial_the_trial_ends_normally(stack, trials, browser):
    page = await open_page(browser, stack, "teacher")
    trial_id = await trials.start()
    await wait_step(page, 10)
    await page.keyboard.down("ArrowRight")
    await wait_step(page, 40)
    await page.context.close()  # with the key still held

    assert await trials.wait_ended(trial_id) == MAX_STEPS
    actions = await trials.teacher_actions(trial_id)
    (held,) = runs_of(actions, PUSH_RIGHT)
    assert held[1] < 60, "the trial went on with NO-OP once the tab was gone"
    assert all(action is None for action in actions[held[1] + 1 :])

    # The next page to open is the teacher again.
    page = await open_page(browser, stack, "teacher")
    await page.context.close()


@needs_chromium
async def test_a_reloaded_teacher_tab_keeps_its_seat(stack, browser):
    teacher = await open_page(browser, stack, "teacher")
    observer = await open_page(browser, stack, "observer")
    await teacher.reload()
    await teacher.wait_for_function("document.getElementById('role').dataset.role === 'teacher'")
    # Once the old page's socket has closed (one observer left), the observer is still an observer.
    await observer.wait_for_function("document.getElementById('audience').textContent === '1'")
    assert await observer.get_attribute("#role", "data-role") == "observer"

    await teacher.context.close()  # the seat is free: an observer may take it
    await observer.wait_for_selector("#claim", state="visible")
    await observer.click("#claim")
    await observer.wait_for_function("document.getElementById('role').dataset.role === 'teacher'")
    await observer.context.close()


async def test_bad_websocket_input_is_dropped_and_counted_and_the_trial_goes_on(stack, trials):
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    url = f"ws://127.0.0.1:{stack.web.port}/ws"
    before = stack.stats()["dropped"]
    with pytest.raises(InvalidStatus):
        async with connect(url, origin="http://evil.example"):
            pass
    trial_id = await trials.start()
    async with connect(url + "?token=script", origin=f"http://127.0.0.1:{stack.web.port}") as ws:
        for message in ["not json", "[]", '{"t": "input", "a": "2"}', '{"t": "input", "a": 2, "p": "yes"}', "x" * 300]:
            await ws.send(message)
        await ws.send(b"\x00\x01binary")
        await ws.send('{"t": "input", "a": 7, "p": false}')  # MountainCar has actions 0..2
        for _ in range(300):  # far faster than 30 steps/s
            await ws.send('{"t": "input", "a": null, "p": false}')
        assert await trials.wait_ended(trial_id) == MAX_STEPS

    def counted(kind: str) -> int:
        return stack.stats()["dropped"].get(kind, 0) - before.get(kind, 0)

    await wait_until(lambda: counted("malformed") >= 6 and counted("unknown_action") >= 1, "the bad messages are counted")
    dropped = stack.stats()["dropped"]
    assert dropped.get("foreign_origin", 0) > before.get("foreign_origin", 0)
    assert dropped.get("malformed", 0) - before.get("malformed", 0) == 6
    assert dropped.get("unknown_action", 0) - before.get("unknown_action", 0) == 1
    assert dropped.get("flood", 0) - before.get("flood", 0) >= 200
    assert all(action is None for action in await trials.teacher_actions(trial_id))


# The browser's Gamepad API, with one pad whose buttons the test presses: Chromium without a
# real pad has none to give. Everything past navigator.getGamepads() is the page's own code.
FAKE_GAMEPAD = """
window.__pad = { id: "Test pad (STANDARD GAMEPAD)", index: 0, connected: true, mapping: "standard",
                 axes: [0, 0, 0, 0], buttons: Array.from({ length: 17 }, () => ({ pressed: false, value: 0 })) };
navigator.getGamepads = () => [window.__pad];
window.__press = (button, pressed) => { window.__pad.buttons[button] = { pressed, value: pressed ? 1 : 0 }; };
window.addEventListener("load", () => window.dispatchEvent(new Event("gamepadconnected")));
"""
DPAD_RIGHT, START = 15, 9


async def press_button(page, button: int, pressed: bool) -> None:
    """Set the button, then let two animation frames pass: the page polls the pad once a frame."""
    await page.evaluate("([b, p]) => window.__press(b, p)", [button, pressed])
    await page.evaluate("new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")


@needs_chromium
async def test_a_gamepad_takes_over_and_pauses(stack, trials, browser):
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    await context.add_init_script(FAKE_GAMEPAD)
    page = await context.new_page()
    await page.goto(stack.url)
    await page.wait_for_function("document.getElementById('role').dataset.role === 'teacher'")
    assert "Test pad" in await page.text_content("#gamepad-state")
    trial_id = await trials.start()
    await wait_step(page, 10)

    pressed_at = await displayed_step(page)  # read first: pressing takes a few frames of the page
    await press_button(page, DPAD_RIGHT, True)
    released_at = await wait_step(page, pressed_at + 30)
    assert await page.text_content("#last-actor") == "Teacher"  # before the release: it acts at once
    await press_button(page, DPAD_RIGHT, False)

    await press_button(page, START, True)
    await page.wait_for_function("document.getElementById('overlay-title').textContent === 'Paused'", timeout=5000)
    await press_button(page, START, False)
    await press_button(page, START, True)
    await page.wait_for_function("document.getElementById('overlay-title').textContent === ''", timeout=5000)
    await press_button(page, START, False)

    assert await trials.wait_ended(trial_id) == MAX_STEPS
    actions = await trials.teacher_actions(trial_id)
    (held,) = runs_of(actions, PUSH_RIGHT)
    assert pressed_at - 1 <= held[0] <= pressed_at + 5 and released_at - 1 <= held[1] <= released_at + 5, (held, pressed_at, released_at)
    await context.close()


@needs_chromium
@pytest.mark.parametrize(
    ("env_id", "key", "action", "label", "frame_size"),
    [
        ("CartPole-v1", "ArrowRight", 1, "Push cart right", (600, 400)),
        ("Acrobot-v1", "ArrowLeft", 0, "Torque -1", (500, 500)),
        ("LunarLander-v3", "ArrowUp", 2, "Main engine", (600, 400)),
    ],
)
async def test_other_discrete_environments_play_with_their_own_keys(stack, trials, browser, env_id, key, action, label, frame_size):
    await publish_untrained_model(stack.services.endpoint, env_id)
    page = await open_page(browser, stack, "teacher", init_script=COUNT_DRAWS)
    await page.keyboard.down(key)  # held before the trial starts: it acts once the trial's key map arrives
    trial_id = await trials.start(env_id, max_steps=90)
    await page.wait_for_function("(label) => document.getElementById('legend').textContent.includes(label)", arg=label)
    steps = await trials.wait_ended(trial_id)  # CartPole falls within a second when pushed one way
    await page.keyboard.up(key)
    assert await page.evaluate("[document.getElementById('frame').width, document.getElementById('frame').height]") == list(frame_size)
    assert await page.evaluate("window.__draws") >= 1  # behind, the page skips to the newest frame: not every one

    actions = await trials.teacher_actions(trial_id)
    assert len(actions) == steps >= 5
    # The first steps may be played before the page has the key map: NO-OP there, the key after.
    first_demonstration = actions.index(action)
    assert first_demonstration <= 5 and all(a is None for a in actions[:first_demonstration]), actions
    assert all(a == action for a in actions[first_demonstration:]), actions
    await page.context.close()


@needs_chromium
async def test_the_page_shows_the_agents_model_the_return_the_loss_trend_and_the_run_summary(stack, trials, browser):
    """The run's iterations carry their loss (apprentice.model); the page follows them in the registry."""
    for loss in (1.2, 0.9, 0.6):
        model = await publish_untrained_model(stack.services.endpoint, loss=loss, training_steps=100, samples=300)
    page = await open_page(browser, stack, "observer" if stack.stats()["teacher_present"] else "teacher")
    await page.wait_for_function("(n) => document.getElementById('latest-iteration').textContent === String(n)", arg=model.iteration)
    assert await page.text_content("#loss") == "0.6000"
    trend_pixels = await page.evaluate(
        """() => { const c = document.getElementById('loss-trend');
                   return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.filter((v, i) => i % 4 === 3 && v > 0).length; }"""
    )
    assert trend_pixels > 50, "the loss trend is drawn"

    trial_id = await trials.start()
    await wait_step(page, 20)
    await page.keyboard.down("ArrowRight")
    await wait_step(page, await displayed_step(page) + 15)
    await page.screenshot(path=str(SCREENSHOT))  # the teacher taking over mid-trial, with the training figures
    await page.keyboard.up("ArrowRight")
    assert await page.text_content("#agent-iteration") == f"iteration {model.iteration}"
    # Read together: the page shows a new step 30 times a second.
    step, shown_return = await page.evaluate("[document.getElementById('step').textContent, document.getElementById('return').textContent].map(Number)")
    assert -step - 2 <= shown_return <= -step + 2, (shown_return, step)  # MountainCar: -1 per step
    assert await trials.wait_ended(trial_id) == MAX_STEPS
    await page.wait_for_function("(id) => document.querySelector('#history tr td') && document.getElementById('history').textContent.includes('-200')", arg=trial_id)
    cells = await page.locator("#history tr").first.locator("td").all_text_contents()
    assert cells[1:3] == ["200", "-200"], cells

    # The run's last iteration: the page says the run is over and sums it up.
    context = cogment.Context(user_id="web-test", cog_settings=cog_settings)
    registry = await context.get_model_registry_v2(cogment.Endpoint(stack.services.endpoint))
    # Without the run's totals, the summary counts the trials the page has in its history.
    await model.store(registry, loss=0.5, eval_success_rate=0.5, run_finished="true")
    await page.wait_for_function("document.getElementById('overlay-title').textContent === 'Run finished'")
    detail = await page.text_content("#overlay-detail")
    assert "succeeds in 50% of the evaluation episodes" in detail and f"iteration {model.iteration}" in detail, detail
    assert re.search(r"\d+ trials? on this page, \d+ steps", detail), detail
    assert await page.is_visible("#run-summary")
    # With them (simple_bc stores them), the summary is the whole run's, trials this page missed included.
    await model.store(registry, loss=0.5, eval_success_rate=0.5, trials=3, samples=600, demonstrations=150, run_finished="true")
    await page.wait_for_function("document.getElementById('overlay-detail').textContent.includes('3 trials, 600 steps; the teacher took over 150 (25%)')")
    await model.store(registry)  # a later iteration: the run goes on for the tests that follow
    await page.wait_for_selector("#run-summary", state="hidden")
    await page.context.close()


@needs_chromium
def test_the_screenshot_shows_the_rendered_environment(stack):
    """Runs after the test that saves it: the frame area is not blank (the car and the hill are drawn)."""
    from PIL import Image

    assert SCREENSHOT.exists(), "test_the_page_shows_the_agents_model_... saves docs/screenshot.png"
    image = Image.open(SCREENSHOT).convert("RGB")
    colours = image.crop((20, 60, 700, 500)).getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20, "the frame area is blank"


# --- the agent asks for help ---------------------------------------------------------------------------


def steps_per_second(steps: list[StoredStep]) -> float:
    """The pace of these consecutive ticks, from their timestamps."""
    return (len(steps) - 1) / (steps[-1].timestamp - steps[0].timestamp)


def answered(step: StoredStep) -> bool:
    """Whether the rule (the one the samples are made with) says the teacher answered the agent's request."""
    return decide(step.player, step.teacher, gymnasium.spaces.Discrete(3)).answered


@contextlib.asynccontextmanager
async def asking_trials(stack: Stack, run_id: str, *web_args: str, **metrics) -> AsyncIterator[tuple[Trials, ChildServer]]:
    """A web server of its own, slowing to ``HELP_STEPS_PER_SECOND`` when asked, and trials of an agent that always asks."""
    await publish_asking_model(stack.services.endpoint, run_id, **metrics)
    args = ["--model-registry", stack.services.endpoint, "--help-steps-per-second", str(HELP_STEPS_PER_SECOND), *web_args]
    with own_web(stack, run_id, *args) as web:
        yield Trials(stack, run_id, run=ASKS_AT_EVERY_STEP, model_id=run_id), web


@needs_chromium
async def test_a_request_for_help_shows_slows_the_trial_and_the_approve_key_answers_it(stack, browser):
    async with asking_trials(stack, f"{RUN_ID}-ask", "--help-timeout", "60", eval_success_rate=0.4) as (trials, web):
        page = await open_page(browser, stack, "teacher", url=page_url(web))
        trial_id = await trials.start(max_steps=60)
        await page.wait_for_selector("#stage.asking #help-request", state="visible")
        assert await page.text_content("#help-request-title") == "The agent asks for help"
        await wait_step(page, await displayed_step(page) + 4)  # at the help pace
        await page.wait_for_function("document.getElementById('target-sps').textContent === '5'")
        await page.keyboard.down(" ")  # held to the end of the trial: every step approved
        await page.wait_for_selector("#help-request", state="hidden")
        assert not await page.evaluate("document.getElementById('stage').classList.contains('asking')")
        steps = await trials.wait_ended(trial_id)
        await page.keyboard.up(" ")

        stored = await trials.steps(trial_id)
        assert len(stored) == steps >= 60  # max_steps: the orchestrator ends the trial there
        assert all(step.player.ask_for_help[0] for step in stored), "the agent asks at every step"
        assert all(is_noop(step.teacher) for step in stored), "an approval carries no action"
        approvals = [tick for tick, step in enumerate(stored) if step.teacher and step.teacher.approve]
        first = approvals[0]
        assert first >= 5 and approvals == list(range(first, steps)), approvals
        assert [answered(step) for step in stored] == [tick >= first for tick in range(steps)]
        # The page learns of the request with the observation after tick 0: from tick 1 to the answer, the help pace.
        asking, answering = steps_per_second(stored[1:first]), steps_per_second(stored[first + 1 :])
        assert asking < HELP_STEPS_PER_SECOND * 1.3 and answering > 2.5 * asking, (asking, answering)

        # The trial's figures in the list and in the chart: every step asked, none taken over, the success at the last evaluation.
        await page.wait_for_function("document.querySelector('#history tr td') && document.getElementById('history').textContent.includes('40%')")
        cells = await page.locator("#history tr").first.locator("td").all_text_contents()
        assert cells[3:6] == ["0 (0%)", f"{steps} (100%)", f"{first} (0)"] and cells[7] == "40%", cells
        assert 1.0 < float(cells[6]) < 4.0, cells  # the seconds the space bar approved: ~55 steps at 30 steps/s
        assert await chart_pixels(page, "#f59e0b") > 30 and await chart_pixels(page, "#16a34a") > 30
        await page.context.close()


async def chart_pixels(page, colour: str) -> int:
    """Pixels of the teaching chart in ``colour`` (a series' line and points)."""
    return await page.evaluate(
        """(hex) => { const c = document.getElementById('teaching-chart'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                      const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); let n = 0;
                      for (let i = 0; i < d.length; i += 4) n += Math.abs(d[i] - r) + Math.abs(d[i + 1] - g) + Math.abs(d[i + 2] - b) < 30 && d[i + 3] > 200;
                      return n; }""",
        colour,
    )


@needs_chromium
async def test_an_unanswered_request_times_out_and_the_trial_goes_back_to_its_pace(stack, browser):
    async with asking_trials(stack, f"{RUN_ID}-timeout", "--help-timeout", "1") as (trials, web):
        page = await open_page(browser, stack, "teacher", url=page_url(web))
        trial_id = await trials.start(max_steps=60)
        await page.wait_for_selector("#stage.asking #help-request", state="visible")
        await page.wait_for_selector("#stage.timed-out #help-request", state="visible")
        assert await page.text_content("#help-request-title") == "No answer: the agent plays on"
        await page.wait_for_function("document.getElementById('unanswered').textContent.endsWith(' (1)')")
        steps = await trials.wait_ended(trial_id)

        stored = await trials.steps(trial_id)
        assert len(stored) == steps >= 60  # max_steps: the orchestrator ends the trial there
        assert all(step.player.ask_for_help[0] and is_noop(step.teacher) and not (step.teacher and step.teacher.approve) for step in stored)
        assert not any(answered(step) for step in stored), "asked and unanswered"
        # From tick 1 the trial waits at the help pace for 1 s, then plays on at its normal pace.
        timeout_at = stored[1].timestamp + 1.0
        waiting = [step for step in stored[1:] if step.timestamp <= timeout_at]
        after = [step for step in stored if step.timestamp > timeout_at + 0.1]
        assert len(waiting) <= HELP_STEPS_PER_SECOND + 2, len(waiting)
        assert steps_per_second(after) > 3 * HELP_STEPS_PER_SECOND, steps_per_second(after)
        await page.wait_for_function("document.querySelector('#history tr td') && document.getElementById('history').textContent.includes('(1)')")
        cells = await page.locator("#history tr").first.locator("td").all_text_contents()
        assert cells[4:6] == [f"{steps} (100%)", f"{steps} (1)"], cells
        await page.context.close()


def test_the_request_for_help_goes_asking_answered_timed_out_and_nothing_else():
    from web.help_request import HelpRequest, IllegalTransition, RequestState

    request = HelpRequest(timeout=5.0)
    request.observe(asked=True, answered=False, now=10.0)
    assert request.state is RequestState.ASKING and request.waiting() and request.deadline == 15.0
    request.observe(asked=True, answered=False, now=11.0)
    assert request.deadline == 15.0, "the timeout counts from the request's first step"
    request.postpone(2.0)  # the teacher paused for 2 s
    assert not request.expire(16.9) and request.expire(17.0)
    assert request.state is RequestState.TIMED_OUT and not request.waiting()
    request.observe(asked=True, answered=False, now=18.0)
    assert request.state is RequestState.TIMED_OUT, "for the rest of the request"
    request.observe(asked=True, answered=True, now=19.0)
    assert request.state is RequestState.ANSWERED
    request.observe(asked=True, answered=False, now=20.0)  # the teacher let go while the agent still asks
    assert request.state is RequestState.ASKING and request.deadline == 25.0
    request.observe(asked=False, answered=False, now=21.0)
    assert request.state is RequestState.NONE and not request.expire(100.0)
    with pytest.raises(IllegalTransition, match="from none to timed_out"):
        request._move(RequestState.TIMED_OUT)
    request.observe(asked=True, answered=True, now=22.0)  # the teacher was already acting when the agent asked
    assert request.state is RequestState.ANSWERED
    with pytest.raises(IllegalTransition, match="from answered to timed_out"):
        request._move(RequestState.TIMED_OUT)


def test_the_help_pace_and_timeout_are_checked_with_the_setting_to_fix():
    from web.help_request import help_pace

    assert help_pace(30, None, 5) == (10.0, 5.0)
    assert help_pace(30, 5, 1) == (5.0, 1.0)
    for bad in [-1, 0, "5", True, float("inf")]:
        with pytest.raises(ValueError, match=r"web\.help_timeout=.*a number > 0"):
            help_pace(30, None, bad)
    for bad in [0, -2, 60, "fast"]:
        with pytest.raises(ValueError, match=r"web\.help_steps_per_second=.*at most web\.steps_per_second=30"):
            help_pace(30, bad, 5)
    result = subprocess.run(
        [sys.executable, "-m", "web", "--orchestrator", "grpc://127.0.0.1:1", "--port", "0", "--help-timeout", "-1"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0 and "web.help_timeout=-1.0 (--help-timeout): give the seconds" in result.stderr, result.stderr


# --- who may connect: host names and the cap on tabs ---------------------------------------------------


def http_status(port: int, path: str, host: str) -> int:
    """The status of ``GET path`` on 127.0.0.1:``port`` with ``host`` in the Host header (as a rebound name gives it)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        return connection.getresponse().status
    finally:
        connection.close()


def websocket_handshake_status(port: int, host: str, origin: str) -> int:
    """The HTTP status of a WebSocket handshake with these Host and Origin headers (101: accepted)."""
    request = (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        return int(sock.recv(4096).split(b" ", 2)[1])


def test_only_the_names_the_server_serves_get_the_page_or_the_websocket(stack):
    """DNS rebinding: a site whose name resolves to 127.0.0.1 gives its own name in the Host header."""
    port = stack.web.port
    for path in ["/", "/static/app.js", "/api/stats"]:
        assert http_status(port, path, f"evil.example:{port}") == 400, path
        for host in [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"{ALLOWED_HOST}:{port}", "localhost"]:
            assert http_status(port, path, host) == 200, (path, host)
    evil = f"evil.example:{port}"
    assert websocket_handshake_status(port, evil, f"http://{evil}") == 400  # Host and Origin agree, but not ours
    assert websocket_handshake_status(port, f"localhost:{port}", f"http://{evil}") == 403  # the same-origin check stays
    assert websocket_handshake_status(port, f"localhost:{port}", f"http://localhost:{port}") == 101


def test_a_bad_allowed_host_stops_the_web_server_with_the_setting_to_fix():
    result = subprocess.run(
        [sys.executable, "-m", "web", "--orchestrator", "grpc://127.0.0.1:1", "--port", "0", "--allowed-host", "http://teacher.lan:8080"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "web.allowed_hosts: 'http://teacher.lan:8080' is not a host name" in result.stderr, result.stderr


async def open_tab(url: str, origin: str, token: str):
    """A WebSocket as the page opens it, and the role the server gave it (from its hello)."""
    from websockets.asyncio.client import connect

    ws = await connect(f"{url}?token={token}", origin=origin)
    async for message in ws:
        if isinstance(message, str) and (hello := json.loads(message))["t"] == "hello":
            return ws, hello["role"]
    raise AssertionError("the server closed the tab before its hello")


async def refused(url: str, origin: str, token: str) -> bool:
    from websockets.exceptions import InvalidStatus

    try:
        ws, _role = await open_tab(url, origin, token)
    except InvalidStatus as error:
        return error.response.status_code == 403
    await ws.close()
    return False


async def test_tabs_beyond_the_cap_are_refused_and_the_teachers_tab_always_gets_in(stack):
    """A flood of tabs would slow the trial (a frame per tab per step): refused; the teacher's seat is never lost to it."""
    with own_web(stack, f"{RUN_ID}-cap", "--max-connections", "3") as web:
        url, origin = f"ws://127.0.0.1:{web.port}/ws", f"http://127.0.0.1:{web.port}"
        teacher, role = await open_tab(url, origin, "teachers-token")
        assert role == "teacher"
        observers = [await open_tab(url, origin, f"observer-{i}") for i in range(2)]
        assert [role for _ws, role in observers] == ["observer", "observer"]

        flood = await asyncio.gather(*(refused(url, origin, f"flood-{i}") for i in range(100)))
        assert all(flood), f"{flood.count(False)} of 100 extra tabs got in"
        stats = web_stats(web)
        assert stats["dropped"]["too_many_tabs"] == 100 and stats["tabs"] == 3

        # The teacher's tab reloaded (its token), while its old socket is still open: it gets in, as the teacher.
        reloaded, role = await open_tab(url, origin, "teachers-token")
        assert role == "teacher"
        await teacher.close()
        await reloaded.close()
        # The seat is free: the next tab takes it, though observers fill every other place.
        await wait_until(lambda: not web_stats(web)["teacher_present"], "the teacher's tab has closed")
        newcomer, role = await open_tab(url, origin, "newcomer")
        assert role == "teacher"
        for ws in [newcomer, *(ws for ws, _role in observers)]:
            await ws.close()


# --- stopping: SIGTERM, whatever the server is doing -------------------------------------------------------


def assert_stops_on_sigterm_within_5_s(web: ChildServer) -> None:
    """SIGTERM: the process is gone within 5 s, by its clean path, and its port can be bound again."""
    started = time.monotonic()
    web.process.send_signal(signal.SIGTERM)
    try:
        code = web.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("python -m web still runs 15 s after SIGTERM")
    elapsed = time.monotonic() - started
    # uvicorn re-raises the SIGTERM once it has stopped; the last-resort deadline would exit with 1.
    assert code == -signal.SIGTERM, f"exit code {code} after {elapsed:.1f} s: not the clean stop (see {web.name}'s log)"
    assert elapsed < 5, f"stopped only {elapsed:.1f} s after SIGTERM"
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as python -m web binds it
        sock.bind(("127.0.0.1", web.port))


async def test_sigterm_stops_a_web_server_that_plays_a_trial(stack):
    run_id = f"{RUN_ID}-sigterm-trial"
    with own_web(stack, run_id) as web:
        trials = Trials(stack, run_id)
        trial_id = await trials.start()
        await wait_until(lambda: (web_stats(web)["step"] or 0) >= 5, "the web server plays the trial's teacher")
        assert_stops_on_sigterm_within_5_s(web)
    assert await trials.wait_ended(trial_id) == MAX_STEPS  # without its teacher, the trial goes on with NO-OP


async def test_sigterm_stops_a_web_server_with_an_open_tab(stack):
    with own_web(stack, f"{RUN_ID}-sigterm-tab") as web:
        ws, role = await open_tab(f"ws://127.0.0.1:{web.port}/ws", f"http://127.0.0.1:{web.port}", "a-tab")
        assert role == "teacher"
        assert_stops_on_sigterm_within_5_s(web)
        await ws.close()


# --- a run that waits for its teacher ---------------------------------------------------------------------


async def count_samples(session) -> None:
    async for _sample in session.all_trial_samples():
        session.produce_sample(1)


async def play(run: AsyncIterator) -> None:
    """Runs ``RunSession.start_and_await_trials`` to its end, as a run implementation does."""
    async for _item in run:
        pass


@needs_chromium
async def test_with_wait_for_teacher_no_trial_starts_before_a_teachers_tab_is_open(stack, browser, capsys):
    run_id = f"{RUN_ID}-wait"
    with own_web(stack, run_id, "--wait-for-teacher") as web:
        url = page_url(web)
        trials = Trials(stack, run_id, web_page=url)
        # The run starts a trial (as main does) while no tab is open: it stays PENDING, and the console and page say why.
        first, params = trials.parameters(max_steps=60)
        run = asyncio.create_task(play(trials.session.start_and_await_trials([(first, params)], count_samples)))
        printed: list[str] = []
        notice = f"Trial {first} is waiting for its teacher: open {url}"

        def console() -> str:
            """What the run has printed so far."""
            printed.append(capsys.readouterr().out)
            return "".join(printed)

        try:
            await wait_until(lambda: web_stats(web)["phase"] == "waiting_for_teacher", "the page says the trial waits for its teacher")
            await wait_until(lambda: notice in console(), "the console says so")
            await asyncio.sleep(2.0)  # the scenario, not a wait: 60 steps at the page's pace, had it not waited
            assert await trials.state(first) == cogment.TrialState.PENDING
            assert await trials.stored_samples(first) == 0

            # The first tab is seated as the teacher, and the trial starts at once.
            teacher = await open_page(browser, stack, "teacher", url=url)
            await wait_step(teacher, 5)
            observer = await open_page(browser, stack, "observer", url=url)
            await teacher.context.close()  # the trial goes on without its teacher (NO-OP)...
            await asyncio.wait_for(run, 60)
            assert await trials.wait_ended(first) >= 60  # max_steps: the orchestrator ends it there
            await wait_until(lambda: not web_stats(web)["teacher_present"], "the server has seen the teacher's tab close")
            # ... and the next one waits for a teacher again: the observer sees why.
            second = await trials.start(max_steps=30)
            await observer.wait_for_function("document.getElementById('overlay-title').textContent === 'Waiting for the teacher'")
            assert await trials.state(second) == cogment.TrialState.PENDING
            await observer.click("#claim")  # the observer takes the seat: the trial starts
            await wait_step(observer, 5)
            assert await trials.wait_ended(second) >= 30
            await observer.context.close()
        finally:
            run.cancel()
    assert console().count(notice) == 1, "said once per trial"


# --- the server's rules, without processes ---------------------------------------------------------------


def test_only_well_formed_messages_are_parsed():
    from web.protocol import Claim, TeacherInput, parse_message

    assert parse_message('{"t": "input", "a": 2, "p": false}') == TeacherInput(2, False)
    assert parse_message('{"t": "input", "a": null, "p": true}') == TeacherInput(None, True)
    assert parse_message('{"t": "input", "a": null, "p": false, "ok": true}') == TeacherInput(None, False, approving=True)
    assert parse_message('{"t": "input", "a": 1, "p": false, "ok": false}') == TeacherInput(1, False)
    assert parse_message('{"t": "claim"}') == Claim()
    bad_approvals = ['{"t": "input", "a": null, "ok": 1}', '{"t": "input", "a": null, "ok": "yes"}', '{"t": "input", "a": null, "ok": null}']
    for bad in [b"{}", "[]", "nope", '{"t": "input", "a": true}', '{"t": "input", "a": 1.5}', '{"t": "x"}', "[" * 10_000, None, *bad_approvals]:
        assert parse_message(bad) is None, bad


def test_the_rate_limiter_drops_what_exceeds_its_rate():
    from web.protocol import RateLimiter

    now = [0.0]
    limiter = RateLimiter(rate=30, burst=5, clock=lambda: now[0])
    assert sum(limiter.allow() for _ in range(100)) == 5
    now[0] += 1.0
    assert sum(limiter.allow() for _ in range(100)) == 5  # refilled up to the burst, no more


async def test_a_tap_between_two_steps_is_still_played_and_the_seat_follows_the_token():
    from web.hub import OBSERVER, TEACHER, Hub
    from web.keymaps import DEFAULT_KEY_MAPS

    hub = Hub(steps_per_second=30)
    first, second = hub.connect("aaa"), hub.connect("bbb")
    assert (first.role, second.role) == (TEACHER, OBSERVER)
    hub.trial_started("run-trial-0", 1, ENV_ID, 3, DEFAULT_KEY_MAPS[ENV_ID])
    hub.receive(first, '{"t": "input", "a": 2, "p": false}')
    hub.receive(first, '{"t": "input", "a": null, "p": false}')  # released before the step
    assert hub.take_action() == (2, False) and hub.take_action() == (None, False)
    hub.receive(first, '{"t": "input", "a": null, "p": false, "ok": true}')
    hub.receive(first, '{"t": "input", "a": null, "p": false}')  # a tap of the approve key between two steps
    assert hub.take_action() == (None, True) and hub.take_action() == (None, False)
    hub.receive(first, '{"t": "input", "a": 1, "p": false, "ok": true}')
    assert hub.take_action() == (1, False)  # a key held takes over: that is not an approval
    hub.receive(first, '{"t": "input", "a": null, "p": false}')
    hub.receive(second, '{"t": "input", "a": 0, "p": false}')
    hub.receive(first, '{"t": "input", "a": 3, "p": false}')
    hub.receive(first, '{"t": "input", "a": null, "p": false, "ok": 1}')
    assert hub.take_action() == (None, False)
    assert hub.dropped == {"observer_input": 1, "unknown_action": 1, "malformed": 1}

    reloaded = hub.connect("aaa")  # the teacher's tab reloaded before its old socket closed
    assert (reloaded.role, first.role) == (TEACHER, OBSERVER)
    hub.receive(reloaded, '{"t": "input", "a": null, "p": true}')
    assert not hub.is_running()
    hub.disconnect(reloaded)  # no teacher: never paused, NO-OP
    assert hub.is_running() and hub.teacher_tab is None
    hub.receive(second, '{"t": "claim"}')
    assert second.role == TEACHER


async def test_the_tabs_are_capped_but_the_teachers_seat_never_is():
    from web.hub import OBSERVER, TEACHER, Hub

    hub = Hub(steps_per_second=30, max_tabs=3)
    teacher = hub.connect("aaa")
    observers = [hub.connect("bbb"), hub.connect("")]
    assert [tab.role for tab in (teacher, *observers)] == [TEACHER, OBSERVER, OBSERVER]
    assert not hub.admits("") and not hub.admits("ccc")
    assert hub.dropped["too_many_tabs"] == 2
    assert hub.admits("aaa")  # the teacher's tab, reloaded
    hub.disconnect(teacher)
    assert hub.admits("ddd")  # the seat is free: the next tab takes it
    assert hub.connect("ddd").role == TEACHER


async def test_the_page_says_a_trial_waits_for_its_teacher_until_one_is_seated():
    from web.hub import RUNNING, WAITING, WAITING_FOR_TEACHER, Hub
    from web.keymaps import DEFAULT_KEY_MAPS

    hub = Hub(steps_per_second=30)
    assert hub.status()["phase"] == WAITING
    with hub.trial_waiting_for_teacher("run-trial-0"):
        assert hub.status()["phase"] == WAITING_FOR_TEACHER
        waiting = asyncio.create_task(hub.wait_for_teacher())
        await asyncio.sleep(0)
        assert not waiting.done()
        tab = hub.connect("aaa")
        await asyncio.wait_for(waiting, 1)
        assert hub.status()["phase"] == WAITING  # seated: the trial is being joined
        hub.disconnect(tab)
        assert hub.status()["phase"] == WAITING_FOR_TEACHER
    hub.trial_started("run-trial-0", 1, ENV_ID, 3, DEFAULT_KEY_MAPS[ENV_ID])
    assert hub.status()["phase"] == RUNNING


def test_the_served_host_names():
    from web.app import served_hosts

    assert served_hosts("127.0.0.1", []) == ["127.0.0.1", "localhost", "[::1]"]
    assert served_hosts("::", ["Teacher.LAN", "::1", "*.example.com"]) == ["127.0.0.1", "localhost", "[::1]", "[::]", "teacher.lan", "*.example.com"]
    for bad in ["http://teacher.lan", "teacher.lan:8080", "*", "evil.*", "a b"]:
        with pytest.raises(ValueError, match=r"web\.allowed_hosts"):
            served_hosts("127.0.0.1", [bad])


def test_key_maps_from_config():
    from web.keymaps import Control, key_map_for, parse_key_maps

    key_maps = parse_key_maps('{"CartPole-v1": {"a": [0, "left"], "d": 1}}')
    assert key_maps["CartPole-v1"] == [Control("a", 0, "left"), Control("d", 1, "Action 1")]
    assert [c.key for c in key_map_for("Unknown-v0", 3, {})] == ["1", "2", "3"]
    for bad in ['{"X": {"p": 0}}', '{"X": {"a": -1}}', '{"X": []}', "nope"]:
        with pytest.raises(ValueError):
            parse_key_maps(bad)
