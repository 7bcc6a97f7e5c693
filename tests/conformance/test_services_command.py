"""``python -m apprentice.services`` as a user runs it: log lines, a clean stop, a taken port."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import cogment
import pytest
from conftest import start_services_process

from apprentice.launcher import PROJECT_ROOT
from conformance.harness import action_set_events, actor, trial_params

pytestmark = pytest.mark.timeout(60)


async def test_sigterm_ends_running_trials_and_keeps_their_samples(tmp_path, services, sdk, components, services_log):
    comp = await components()
    params = trial_params(comp.endpoint, [actor("p1", "player", comp.endpoint)], datalog_endpoint=services.endpoint)
    trial_id = await sdk.start_trial(params, "runs-until-stopped")
    await sdk.wait_state(trial_id, "RUNNING")
    await comp.wait_for(lambda records: len(action_set_events(records, trial_id)) >= 50, 15, "50 ticks", trial_id)

    stopping_since = time.monotonic()
    services.process.send_signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(services.process.wait, 20)
    assert exit_code == 0, services_log()[-3000:]
    assert time.monotonic() - stopping_since < 10, "the services took too long to stop"

    log_lines = services_log().splitlines()
    assert any(f"Trial {trial_id} started" in line for line in log_lines), services_log()[-3000:]
    assert any(f"Trial {trial_id} ended" in line and "shutting down" in line for line in log_lines)

    # Everything logged before the stop is on disk, and the trial is marked as ended.
    restarted = start_services_process(services.data_dir, tmp_path / "restarted.log")
    try:
        context = cogment.Context(user_id="test", cog_settings=None, prometheus_registry=None)
        datastore = context.get_datastore(cogment.Endpoint(restarted.endpoint))
        (info,) = await datastore.get_trials([trial_id])
        assert info.trial_state == cogment.TrialState.ENDED
        assert info.sample_count > 10
        samples = [sample async for sample in datastore.all_samples([info])]
        assert [sample.tick_id for sample in samples] == list(range(info.sample_count))
    finally:
        restarted.stop()


def test_a_taken_port_is_refused_with_the_option_to_change_it(services):
    second = subprocess.run(
        [sys.executable, "-m", "apprentice.services", "--port", str(services.port)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode != 0
    assert f"127.0.0.1:{services.port}" in second.stderr and "--port" in second.stderr, second.stderr
    assert services.process.poll() is None, "the first services process must keep running"
