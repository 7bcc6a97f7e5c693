"""The orchestrator: runs trials (TrialLifecycleSP) and lets client actors join them (ClientActorSP).

- ``params``: checks TrialParams before a trial exists, and the limits on what a trial may ask for.
- ``trial``: one trial's state machine and tick loop.
- ``components``: per-trial state of the environment and of each actor.
- ``streams``: one bidirectional gRPC stream with ordered, non-blocking sends.
- ``channels``: the gRPC channels to components, shared by trials, closed once unused.
- ``datalog``: the samples of a trial, buffered and sent to a DatalogSP.
- ``table``: the trials of this orchestrator, their watchers, stale-trial and clean-up checks.
- ``lifecycle`` and ``client_actors``: the two gRPC servicers.
"""

from apprentice.services.orchestrator.table import Orchestrator

__all__ = ["Orchestrator"]
