"""Cogment services written in Python.

The official Cogment orchestrator, trial datastore and model registry are native binaries that
cannot be installed with pip. These modules speak the same gRPC API (the ``cogmentAPI`` protos
shipped inside the ``cogment`` SDK), so code written for the official SDK runs against them
unchanged, and an application can move to the official services by changing endpoints.

- ``orchestrator``: TrialLifecycleSP and ClientActorSP; runs the trials.
- ``datastore``: DatalogSP (trial samples in) and TrialDatastoreSP (trial samples out).
- ``model_registry``: ModelRegistrySP.
- ``server``: all of the above on one gRPC port (``python -m apprentice.services``).
- ``bad_requests``: requests that are not their method's message, or lack the metadata it needs, get
  INVALID_ARGUMENT; a method that fails gets INTERNAL; either is logged once per kind a minute.
- ``common``: Version/Status answers, metadata, paging handles, server options.
"""
