"""Finds the trials the page plays: each new PENDING trial with a client ``teacher`` slot.

A trial waits in PENDING until its client actors join (a client slot whose
``initial_connection_timeout`` is 0 waits forever). By default the watcher joins at once, whether
or not a tab is open: the trial then goes at the page's pace, with NO-OP while nobody teaches.
With ``wait_for_teacher`` it joins only once a teacher's tab is open, so that no trial is played
before a person is there; until then the trial stays PENDING and the page says that it waits for
its teacher. A tab closed mid-trial does not stop that trial (it goes on with NO-OP); the next one
waits again.

A trial whose ``teacher`` is a service actor (e.g. the scripted teacher) refuses the join; that is
expected and only logged. The orchestrator may be down or restart: the watcher retries.
"""

from __future__ import annotations

import asyncio
import logging

import cogment

from apprentice.cancellation import raise_if_cancelled
from apprentice.cog_settings import TEACHER_ACTOR_CLASS
from apprentice.run import RUN_ID_PROPERTY
from web.hub import Hub

log = logging.getLogger(__name__)

TEACHER_ACTOR_NAME = "teacher"
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
LEAVE_SECONDS = 1.0  # to leave the joined trials when the server stops


class TrialWatcher:
    def __init__(
        self,
        context: cogment.Context,
        orchestrator_endpoint: str,
        hub: Hub,
        run_id: str | None = None,
        wait_for_teacher: bool = False,
    ) -> None:
        self.context = context
        self.endpoint = cogment.Endpoint(orchestrator_endpoint)
        self.hub = hub
        self.run_id = run_id  # join only the trials of this run (None: every run)
        self.wait_for_teacher = wait_for_teacher
        self._seen: set[str] = set()  # trials announced PENDING and not ENDED yet
        self._joins: dict[str, asyncio.Task] = {}  # by trial id: waiting for a teacher, or playing

    async def run(self) -> None:
        """Watch until cancelled; then leave the joined trials (they go on with NO-OP)."""
        controller = self.context.get_controller(self.endpoint)
        failures = 0
        try:
            while True:
                try:
                    await controller.get_remote_versions()  # the stream says nothing until a trial changes
                    self.hub.set_orchestrator("connected")
                    failures = 0
                    states = [cogment.TrialState.PENDING, cogment.TrialState.ENDED]
                    async for info in controller.watch_trials(states, full_info=True):
                        if info.state == cogment.TrialState.PENDING:
                            self._on_pending(controller, info)
                        else:
                            self._on_ended(info.trial_id)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - any failure of the link: retry
                    log.debug("Orchestrator at %s: %s", self.endpoint.url, error)
                raise_if_cancelled()
                self.hub.set_orchestrator("unreachable")
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
        finally:
            joins = list(self._joins.values())
            for task in joins:
                task.cancel()
            if joins:
                await asyncio.wait(joins, timeout=LEAVE_SECONDS)

    def _on_pending(self, controller, info) -> None:
        if info.trial_id in self._seen:
            return
        self._seen.add(info.trial_id)
        if self.run_id is not None and (info.properties or {}).get(RUN_ID_PROPERTY) != self.run_id:
            return
        task = asyncio.create_task(self._join(controller, info.trial_id), name=f"teacher of {info.trial_id}")
        self._joins[info.trial_id] = task
        task.add_done_callback(lambda _task: self._joins.pop(info.trial_id, None))

    def _on_ended(self, trial_id: str) -> None:
        """A trial ended: if it was still waiting for a teacher (e.g. terminated), stop waiting."""
        self._seen.discard(trial_id)
        task = self._joins.get(trial_id)
        if task is not None and self.hub.is_waiting_for_teacher(trial_id):
            task.cancel()

    async def _join(self, controller, trial_id: str) -> None:
        try:
            actors = await controller.get_actors(trial_id)
            if not any(a.actor_name == TEACHER_ACTOR_NAME and a.actor_class_name == TEACHER_ACTOR_CLASS for a in actors):
                return
            if self.wait_for_teacher:
                with self.hub.trial_waiting_for_teacher(trial_id):
                    if not self.hub.teacher_present():
                        log.info("Trial %s waits for its teacher to open the page", trial_id)
                    await self.hub.wait_for_teacher()
            log.info("Joining trial %s as its teacher", trial_id)
            await self.context.join_trial(trial_id, self.endpoint, actor_name=TEACHER_ACTOR_NAME)
            raise_if_cancelled()
            log.info("Trial %s ended", trial_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - e.g. a service teacher: the orchestrator refuses
            log.info("Not playing the teacher of trial %s: %s", trial_id, error)
