"""When the learner asks for help: the gate's rate, its settings, and the rule that uses its requests."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from omegaconf import OmegaConf

from apprentice.help import HelpGate, HelpMode, HelpSettings, add_help_request
from apprentice.protos.data_pb2 import PlayerAction
from apprentice.spaces import tensor_from_array
from apprentice.teaching import TeacherMode, decide, decide_batch


@pytest.mark.parametrize("budget", [0.05, 0.2, 0.5])
def test_the_gate_asks_at_about_the_budgets_rate_on_a_stationary_stream(budget):
    gate = HelpGate(HelpSettings(HelpMode.ASK, budget=budget, window=1000))
    stream = np.random.default_rng(0).lognormal(size=(2000, 8)).astype(np.float32)  # 16,000 steps, 8 copies a tick
    asks = np.concatenate([gate.ask(uncertainties) for uncertainties in stream])
    assert abs(asks[1000:].mean() - budget) < 0.02
    assert gate.threshold() == pytest.approx(np.quantile(stream.reshape(-1)[-1000:], 1 - budget), rel=1e-6)


def test_on_a_rising_stream_the_budget_caps_the_requests():
    """A learner driving into ever newer states: every step is above the quantile of the ones before."""
    gate = HelpGate(HelpSettings(HelpMode.ASK, budget=0.1, window=500))
    asks = np.concatenate([gate.ask(np.array([step / 100.0])) for step in range(2000)])
    assert asks[0]  # before anything is known, it asks
    assert asks.mean() <= 0.1 + 1 / 500
    assert all(asks[start : start + 500].sum() <= 51 for start in range(0, 1500, 100))


def test_the_gate_asks_before_it_has_seen_a_step_and_follows_a_shift():
    gate = HelpGate(HelpSettings(HelpMode.ASK, budget=0.1, window=200))
    assert gate.ask(np.array([0.0, 1.0])).tolist() == [False, True]  # the cap: one request, the most uncertain
    for _ in range(300):
        gate.ask(np.random.default_rng(1).uniform(0, 1, size=1))
    assert gate.ask(np.array([5.0]))[0]  # far above what it has seen
    for _ in range(300):  # the learner grows unsure everywhere: the threshold follows within the window
        gate.ask(np.random.default_rng(2).uniform(10, 11, size=1))
    assert gate.threshold() > 10


def test_a_fixed_threshold_replaces_the_budget():
    gate = HelpGate(HelpSettings(HelpMode.ASK, threshold=0.5))
    np.testing.assert_array_equal(gate.ask(np.array([0.2, 0.7, 0.5])), [False, True, False])


@pytest.mark.parametrize(
    ("settings", "ensemble_size", "named"),
    [({"mode": "sometimes"}, 5, "run.help.mode"), ({"mode": "ask", "budget": 1.5}, 5, "run.help.budget"),
     ({"mode": "ask", "threshold": -1}, 5, "run.help.threshold"), ({"mode": "ask", "window": 0}, 5, "run.help.window"),
     ({"mode": "ask"}, 1, "run.ensemble_size")],
)
def test_bad_help_settings_get_an_error_that_names_them(settings, ensemble_size, named):
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        HelpSettings.from_config(OmegaConf.create(settings), ensemble_size)


def test_help_settings_travel_in_the_actor_config():
    for settings in (HelpSettings(), HelpSettings(HelpMode.ASK, 0.2, None, 50), HelpSettings(HelpMode.ASK, 0.1, 0.3, 1000)):
        assert HelpSettings.from_message(settings.message()) == settings


def player_action(values, asks, uncertainties) -> PlayerAction:
    action = PlayerAction(value=tensor_from_array(np.asarray(values, dtype=np.float32)))
    action.ask_for_help.extend(asks)
    action.uncertainty.extend(uncertainties)
    return action


BOX = gymnasium.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)


def test_in_label_mode_the_teacher_labels_only_where_the_player_asked():
    player = player_action([[0.1], [0.2], [0.3]], [True, False, True], [0.9, 0.1, 0.8])
    expert = PlayerAction(value=tensor_from_array(np.array([[-0.5], [-0.6], [1.7]], dtype=np.float32)))
    step = decide_batch(player, expert, BOX, 3, TeacherMode.LABEL)
    np.testing.assert_allclose(step.performed_actions, [[0.1], [0.2], [0.3]])  # the learner plays every step
    np.testing.assert_allclose(step.labels, [[-0.5], [0.2], [1.7]])  # the expert's label (unclipped) only where asked
    np.testing.assert_array_equal(step.demonstrations, [True, False, True])
    np.testing.assert_array_equal(step.asked, [True, False, True])
    np.testing.assert_array_equal(step.answered, [True, False, True])
    np.testing.assert_allclose(step.uncertainty, [0.9, 0.1, 0.8])


def test_a_player_that_never_asks_gets_every_step_labelled_as_in_plain_dagger():
    player = PlayerAction(value=tensor_from_array(np.zeros((2, 1), dtype=np.float32)))
    expert = PlayerAction(value=tensor_from_array(np.ones((2, 1), dtype=np.float32)))
    step = decide_batch(player, expert, BOX, 2, TeacherMode.LABEL)
    assert step.demonstrations.all() and not step.asked.any()


def test_in_override_mode_a_request_changes_nothing_but_is_recorded():
    space = gymnasium.spaces.Discrete(3)
    asking = PlayerAction(value=tensor_from_array(np.array(0)))
    asking.ask_for_help.append(True)
    asking.uncertainty.append(0.4)
    takeover = decide(asking, PlayerAction(value=tensor_from_array(np.array(2))), space)
    assert (takeover.performed_action, takeover.demonstration, takeover.asked, takeover.answered) == (2, True, True, True)
    approval = decide(asking, PlayerAction(approve=True), space)
    assert (approval.performed_action, approval.demonstration, approval.approved, approval.answered) == (0, False, True, True)
    unanswered = decide(asking, PlayerAction(), space)
    assert (unanswered.performed_action, unanswered.asked, unanswered.answered, unanswered.uncertainty) == (0, True, False, pytest.approx(0.4))


def test_the_player_writes_its_request_only_with_a_gate():
    action = PlayerAction()
    add_help_request(action, None, np.array([1.0]))
    assert not action.ask_for_help and not action.uncertainty
    add_help_request(action, HelpGate(HelpSettings(HelpMode.ASK, threshold=0.5)), np.array([1.0, 0.1]))
    assert list(action.ask_for_help) == [True, False] and action.uncertainty == pytest.approx([1.0, 0.1])
