"""The teacher's web page: a person plays the ``teacher`` of Apprentice's trials in a browser.

``python -m web --orchestrator grpc://HOST:PORT`` serves one page and a WebSocket. In the same
process, a watcher joins every new trial that has a client ``teacher`` slot and plays it with the
key the teacher's tab holds (``teacher.py``); the tabs get the rendered frames and a status
(``hub.py``). Modules, one job each:

- ``keymaps``: which key is which action, per gymnasium environment;
- ``protocol``: the messages a tab may send, checked before anything uses them;
- ``help_request``: the agent's request for help (asking, answered, timed out) and its pace;
- ``hub``: the open tabs, their roles, the teacher's input and what goes out to each tab;
- ``teacher``: the Cogment actor that paces a trial and acts for the person;
- ``watcher``: finds the trials to join (at once, or once a teacher's tab is open);
- ``app``: the Starlette app (page, WebSocket, stats) and who may reach it (host names);
- ``__main__``: the command line, the ready line and a bounded stop on SIGTERM.
"""
