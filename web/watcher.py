"""Finds the trials the page plays: each new PENDING trial with a client ``teacher`` slot.

A trial waits in PENDING until its client actors join, so the watcher joins at once, whether or
not a tab is open: the trial then goes at the page's pace, with NO-OP while nobody teaches. A
trial whose ``teacher`` is a service actor (e.g. the scripted teacher) refuses the join; that is
expected and only logged. The orchestrator may be down or restart: the watcher retries.
"""

from __future__ import annotations

import asyncio
import logging

import cogment

from apprentice.cog_settings import TEACHER_ACTOR_CLASS
from apprentice.run import RUN_ID_PROPERTY
from web.hub import Hub

log = logging.getLogger(__name__)

TEACHER_ACTOR_NAME = "teacher"
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)


class TrialWatcher:
    def __init__(self, context: cogment.Context, orchestrator_endpoint: str, hub: Hub, run_id: str | None = None) -> None:
        self.context = context
        self.endpoint = cogment.Endpoint(orchestrator_endpoint)
        self.hub = hub
        self.run_id = run_id  # join only the trials of this run (None: every run)
        self._seen: set[str] = set()
        self._joins: set[asyncio.Task] = set()

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
                    async for info in controller.watch_trials([cogment.TrialState.PENDING], full_info=True):
                        self._on_pending(controller, info)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - any failure of the link: retry
                    log.debug("Orchestrator at %s: %s", self.endpoint.url, error)
                self.hub.set_orchestrator("unreachable")
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
        finally:
            for task in self._joins:
                task.cancel()

    def _on_pending(self, controller, info) -> None:
        if info.trial_id in self._seen:
            return
        self._seen.add(info.trial_id)
        if self.run_id is not None and (info.properties or {}).get(RUN_ID_PROPERTY) != self.run_id:
            return
        task = asyncio.create_task(self._join(controller, info.trial_id), name=f"teacher of {info.trial_id}")
        self._joins.add(task)
        task.add_done_callback(self._joins.discard)

    async def _join(self, controller, trial_id: str) -> None:
        try:
            actors = await controller.get_actors(trial_id)
            if not any(a.actor_name == TEACHER_ACTOR_NAME and a.actor_class_name == TEACHER_ACTOR_CLASS for a in actors):
                return
            log.info("Joining trial %s as its teacher", trial_id)
            await self.context.join_trial(trial_id, self.endpoint, actor_name=TEACHER_ACTOR_NAME)
            log.info("Trial %s ended", trial_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - e.g. a service teacher: the orchestrator refuses
            log.info("Not playing the teacher of trial %s: %s", trial_id, error)
