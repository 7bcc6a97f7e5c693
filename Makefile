# Two entry points: `make run` (the main job) and `make test` (the test suite).
# Both create the virtual environment in .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(wildcard apprentice/protos/*.proto)

.PHONY: run test report egl protos clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# The cogment SDK declares Python<3.11 and old grpcio/protobuf pins; it runs fine on the
	# versions above, so install it on its own, without its declared dependencies.
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python cogment==2.10.1
	touch $@

# The project's own protobuf messages, generated from apprentice/protos/*.proto.
protos: $(BIN)/.installed
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. $(PROTOS)

run: $(BIN)/.installed protos
	$(BIN)/python -m main +experiment=simple_bc/mountain_car

# The browser tests drive Debian's Chromium (Playwright's own browser download is not used).
/usr/bin/chromium:
	apt-get update -qq && apt-get install -y -qq chromium

test: $(BIN)/.installed protos /usr/bin/chromium
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# MuJoCo renders the report's video off-screen on the CPU (MUJOCO_GL=egl) through Mesa's EGL.
egl:
	dpkg -s libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri)

# The imitation results report (docs/results.md, plots, video); the experts are read from ../shared/experts.
report: $(BIN)/.installed protos egl
	$(BIN)/python bench/imitation_report.py

clean:
	rm -rf $(VENV)
