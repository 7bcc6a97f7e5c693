"""Web page benchmark: frames the page displays per second, and key press to action in the environment.

    .venv/bin/python bench/web_latency.py [--seconds 10] [--presses 25] [--rates 30 60] [--formats jpeg webp png]

For each trial pace (steps/s) and each frame encoding, one MountainCar trial runs through the real
stack: ``python -m apprentice.services``, ``python -m apprentice.components`` (the gym environment
and the simple_bc player with an untrained model) and ``python -m web``, with the page open in
headless Debian Chromium (Playwright). During ``--seconds`` the benchmark taps the Down arrow
``--presses`` times at random moments (so that presses land anywhere within a step period; Down,
"don't accelerate", is a takeover that never brings the car to the flag, which would end the
trial) and measures:

- displayed frames/s: frames the page drew on its canvas (``drawImage`` calls), over the window;
- key to environment: from the browser's ``keydown`` event (its timestamp, on the system clock) to
  the moment the environment receives the action set in which the teacher takes over (logged by
  ``TimedGymEnvironment`` below, in the components process), p50 and p95;
- the trial pace the page reports, and the frame size and encoding time of each format.

Targets (the project's): 60 displayed frames/s sustained at 60 steps/s, and p95 key to environment
<= 30 ms. The format to stream is the one with the most displayed frames/s at the highest pace.
This is a benchmark, not a test: it prints numbers and checks nothing. Every process it starts is
stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import cogment
import gymnasium
import psutil
import torch
from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from actors.simple_bc import SimpleBCModel, SimpleBCTraining  # noqa: E402
from apprentice import cog_settings  # noqa: E402
from apprentice.launcher import ChildServer, start_python  # noqa: E402
from apprentice.run import Endpoints, RunSession  # noqa: E402
from apprentice.spaces import environment_specs, is_noop  # noqa: E402
from environments.gym_environment import FRAME_FORMATS, encode_frame, find_roles, run_trial  # noqa: E402

ENV_ID = "MountainCar-v0"
RUN_ID = "bench-web"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TAKEOVER_LINE = re.compile(r"takeover at (\d+\.\d+)")

log = logging.getLogger("bench.web_latency")


# --- In the components process: the environment, timing each takeover ------------------------------


class TimedGymEnvironment:
    """``GymEnvironment``, logging the system time at which each teacher takeover reaches it."""

    def __init__(self, cfg: dict, model_registry=None) -> None:
        pass

    async def impl(self, environment_session) -> None:
        await run_trial(TakeoverTimer(environment_session))


class TakeoverTimer:
    """The environment session, seen through a filter that notes NO-OP -> action transitions."""

    def __init__(self, session) -> None:
        self._session = session

    def __getattr__(self, name: str):
        return getattr(self._session, name)

    async def all_events(self):
        teacher_index = find_roles(self._session.get_active_actors()).teacher_index
        teacher_was_acting = False
        async for event in self._session.all_events():
            if event.actions and teacher_index is not None:
                acting = not is_noop(event.actions[teacher_index].action)
                if acting and not teacher_was_acting:
                    log.warning("takeover at %.6f", time.time())
                teacher_was_acting = acting
            yield event


# --- In the benchmark process ------------------------------------------------------------------------

# Counts the frames the page receives and those it draws on its canvas, and notes when each Down
# arrow keydown happened (system clock, ms): the page's own code runs unchanged.
INSTRUMENTATION = """
window.__received = 0;
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (event) => { if (typeof event.data !== "string") window.__received += 1; });
  }
};
window.__draws = [];
const drawImage = CanvasRenderingContext2D.prototype.drawImage;
CanvasRenderingContext2D.prototype.drawImage = function (...args) {
  if (this.canvas.id === "frame") window.__draws.push(performance.now());
  return drawImage.apply(this, args);
};
window.__keydowns = [];
window.addEventListener("keydown", (event) => {
  if (event.key === "ArrowDown" && !event.repeat) window.__keydowns.push(performance.timeOrigin + event.timeStamp);
}, true);
"""


@dataclass
class Measurement:
    rate: float
    frame_format: str
    displayed_fps: float
    pace: float
    latencies_ms: list[float]
    missed: int
    cpu_ms_per_step: dict[str, float]  # CPU time of each process group over the window, per step played
    frames: dict[str, int]  # over the window: steps played, frames sent by the server, received and drawn by the page

    def describe(self) -> str:
        cpu = ", ".join(f"{group} {ms:.1f}" for group, ms in self.cpu_ms_per_step.items())
        frames = ", ".join(f"{count} {what}" for what, count in self.frames.items())
        return (
            f"{self.rate:3g} steps/s  {self.frame_format:4s}  displayed {self.displayed_fps:5.1f} frames/s  pace {self.pace:5.1f} steps/s  "
            f"key->env p50 {self.percentile(50):5.1f} ms  p95 {self.percentile(95):5.1f} ms  "
            f"({len(self.latencies_ms)} presses, {self.missed} not matched)\n"
            f"      CPU ms per step: {cpu}\n"
            f"      in the window: {frames}"
        )

    def percentile(self, q: float) -> float:
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1] if len(self.latencies_ms) > 1 else float("nan")


def frame_costs() -> dict[str, tuple[int, float]]:
    """Bytes and encoding ms of one MountainCar frame in each format."""
    env = gymnasium.make(ENV_ID, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    env.close()
    costs = {}
    for name in FRAME_FORMATS:
        start = time.perf_counter()
        for _ in range(20):
            data = encode_frame(frame, name)
        costs[name] = (len(data), (time.perf_counter() - start) / 20 * 1000)
    return costs


def takeover_times(components_log: Path) -> list[float]:
    return [float(match[1]) for match in TAKEOVER_LINE.finditer(components_log.read_text())]


async def measure(
    browser, services: ChildServer, components: ChildServer, web: ChildServer, log_dir: Path,
    rate: float, frame_format: str, seconds: float, presses: int, trial_number: int,
) -> Measurement:  # fmt: skip
    context = cogment.Context(user_id="bench", cog_settings=cog_settings)
    endpoints = Endpoints(services.endpoint, services.endpoint, services.endpoint, (components.endpoint,))
    session = RunSession(RUN_ID, None, endpoints, context, metrics=None)
    # The run's own settings (make run's experiment), with the person in the browser as teacher.
    run_config = OmegaConf.load(PROJECT_ROOT / "config" / "experiment" / "simple_bc" / "mountain_car.yaml").run
    cfg = OmegaConf.merge(run_config, {"env_id": ENV_ID, "resume": None, "teacher": {"implementation": "client"}})
    params = SimpleBCTraining(cfg).trial_parameters(session, trial_number)
    environment_config = params.environment_config
    environment_config.frame_format = frame_format
    environment_config.make_kwargs_json = '{"max_episode_steps": 100000}'  # the trial lasts the whole window
    params.environment_config = environment_config

    page_context = await browser.new_context(viewport={"width": 1280, "height": 800})
    await page_context.add_init_script(INSTRUMENTATION)
    page = await page_context.new_page()
    await page.goto(f"http://127.0.0.1:{web.port}/")
    await page.wait_for_function("document.getElementById('role').dataset.role === 'teacher'")

    trial_id = f"{RUN_ID}-trial-{trial_number}"
    await session.controller.start_trial(trial_id_requested=trial_id, trial_params=params)
    try:
        await page.wait_for_function("Number(document.getElementById('step').textContent) >= 30", timeout=60_000)
        draws_before = await page.evaluate("window.__draws.length")
        step_before = await displayed_step(page)
        received_before, sent_before = await page.evaluate("window.__received"), frames_sent(web)
        cpu_before = cpu_seconds_by_group(services, components, web)
        started = time.monotonic()
        presses_window = seconds / presses
        for _ in range(presses):
            await asyncio.sleep(random.uniform(0.5, 1.0) * presses_window)
            await page.keyboard.down("ArrowDown")
            await asyncio.sleep(0.1)
            await page.keyboard.up("ArrowDown")
        elapsed = time.monotonic() - started
        draws = await page.evaluate("window.__draws.length") - draws_before
        steps = await displayed_step(page) - step_before
        frames = {"steps": steps, "sent": frames_sent(web) - sent_before, "received": await page.evaluate("window.__received") - received_before, "drawn": draws}
        cpu = {group: total - cpu_before.get(group, 0.0) for group, total in cpu_seconds_by_group(services, components, web).items()}
        pace = float(await page.text_content("#sps"))
        keydowns = [ms / 1000 for ms in await page.evaluate("window.__keydowns")]
    finally:
        await session.controller.terminate_trial([trial_id], hard=True)
        await page_context.close()

    await asyncio.sleep(0.5)  # the last takeover lines reach the log
    takeovers = takeover_times(log_dir / "components.log")
    latencies, missed = [], 0
    for pressed in keydowns:
        applied = next((t for t in takeovers if t >= pressed), None)
        if applied is None or applied - pressed > 0.5:
            missed += 1
        else:
            latencies.append((applied - pressed) * 1000)
    cpu_ms_per_step = {group: 1000 * used / max(steps, 1) for group, used in cpu.items()}
    return Measurement(rate, frame_format, draws / elapsed, pace, latencies, missed, cpu_ms_per_step, frames)


class TrialEndedEarly(RuntimeError):
    """The car reached the flag during the window: the measurement is repeated with another seed."""


async def displayed_step(page) -> int:
    text = await page.text_content("#step")
    if not text or not text.isdigit():
        raise TrialEndedEarly("the trial ended during the measurement window")
    return int(text)


def frames_sent(web: ChildServer) -> int:
    """Frames the web server has sent to its tabs (its /api/stats)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(f"http://127.0.0.1:{web.port}/api/stats", timeout=5) as response:
        return sum(tab["sent"] for tab in json.load(response)["frames"].values())


def cpu_seconds_by_group(services: ChildServer, components: ChildServer, web: ChildServer) -> dict[str, float]:
    """User + system CPU seconds so far of: the three servers; Chromium's renderer (the page's
    JavaScript, layout, decoding, drawing); Chromium's other processes (browser, network, display
    compositor); Playwright's driver; and this process."""
    servers = {services.process.pid: "services", components.process.pid: "components", web.process.pid: "web"}
    totals = dict.fromkeys([*servers.values(), "renderer", "chromium", "playwright", "bench"], 0.0)
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            seconds = sum(process.cpu_times()[:2])
            if process.pid == me.pid:
                group = "bench"
            elif process.pid in servers:
                group = servers[process.pid]
            elif "node" in process.name():
                group = "playwright"
            else:
                group = "renderer" if "--type=renderer" in process.cmdline() else "chromium"
        except psutil.Error:
            continue  # ended meanwhile
        totals[group] += seconds
    return totals


async def run(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    costs = frame_costs()
    print("frame of MountainCar, 600x400:  " + ",  ".join(f"{name} {size / 1000:.1f} kB in {ms:.1f} ms" for name, (size, ms) in costs.items()))
    results: list[Measurement] = []
    with contextlib.ExitStack() as exit_stack:
        log_dir = Path(tempfile.mkdtemp(prefix="apprentice-web-bench-"))
        exit_stack.callback(shutil.rmtree, log_dir, ignore_errors=True)

        def start(name: str, command: list[str]) -> ChildServer:
            child = start_python(name, command, log_dir / f"{name}.log")
            exit_stack.callback(child.stop)
            return child

        quiet = ["--port", "0", "--log-level", "WARNING"]
        services = start("services", ["-m", "apprentice.services", *quiet, "--data-dir", str(log_dir / "data")])
        components = start("components", ["-m", "apprentice.components", *quiet, "--model-registry", services.endpoint,
                                          "--environment", "gym=bench.web_latency.TimedGymEnvironment",
                                          "--actor", "simple_bc=actors.simple_bc.SimpleBCActor"])  # fmt: skip
        context = cogment.Context(user_id="bench", cog_settings=cog_settings)
        registry = await context.get_model_registry_v2(cogment.Endpoint(services.endpoint))
        torch.manual_seed(0)  # the same untrained player in every run of the bench
        await SimpleBCModel(RUN_ID, environment_specs(ENV_ID), [64, 64]).store(registry)

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            trial_number = 0
            for rate in args.rates:
                web = start(f"web-{rate:g}", ["-m", "web", *quiet, "--orchestrator", services.endpoint,
                                              "--steps-per-second", str(rate), "--run-id", RUN_ID])  # fmt: skip
                for frame_format in args.formats:
                    for _attempt in range(3):
                        trial_number += 1  # also the trial's seed
                        try:
                            result = await measure(browser, services, components, web, log_dir, rate, frame_format, args.seconds, args.presses, trial_number)
                            break
                        except TrialEndedEarly:
                            print(f"{rate:3g} steps/s  {frame_format}: the car reached the flag during the window; again with another seed")
                    else:
                        raise SystemExit("three trials in a row ended during the window: give fewer --seconds")
                    results.append(result)
                    print(result.describe(), flush=True)
                web.stop()
            await browser.close()

    fastest = max(args.rates)
    best = max((r for r in results if r.rate == fastest), key=lambda r: (round(r.displayed_fps), -r.percentile(95)))
    print(f"\nmost displayed frames/s at {fastest:g} steps/s: {best.frame_format} ({best.displayed_fps:.1f} frames/s)")
    for result in results:
        fps_ok = result.displayed_fps >= 0.95 * 60 if result.rate >= 60 else None
        latency_ok = result.percentile(95) <= 30
        print(
            f"  {result.rate:3g} steps/s {result.frame_format:4s}: p95 <= 30 ms {'met' if latency_ok else 'NOT met'}"
            + ("" if fps_ok is None else f", 60 frames/s {'met' if fps_ok else 'NOT met'}")
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window per trial (default 10)")
    parser.add_argument("--presses", type=int, default=25, help="key taps per window (default 25)")
    parser.add_argument("--rates", type=float, nargs="+", default=[30.0, 60.0], help="trial paces, steps/s (default 30 60)")
    parser.add_argument("--formats", nargs="+", default=list(FRAME_FORMATS), choices=list(FRAME_FORMATS), help="frame encodings")
    return parser.parse_args()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(parse_args()))


if __name__ == "__main__":
    main()
