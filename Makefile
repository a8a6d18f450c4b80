# The two commands of the README: `make demo` and `make test`. Both set up a fresh machine first.
.PHONY: setup demo test bench
DATA ?= demo_data

setup:
	@tools/setup.sh

demo: setup
	.venv/bin/htouch collect $(DATA) --task zip --episodes 3 --no-panel
	.venv/bin/htouch ls $(DATA)
	.venv/bin/htouch validate $(DATA)
	.venv/bin/htouch inspect $(DATA)/episode_000000 --plot $(DATA)/episode_000000.png
	.venv/bin/htouch replay $(DATA)/episode_000000 --to video $(DATA)/episode_000000.mp4

# tests/test_hw_fr3.py runs in a process of its own: after tests/test_export.py in the same process, its FR3
# recordings lost every state row (creating the episode's Zarr arrays took longer than the episode; see
# docs/teleop-and-robot.md).
test: setup
	.venv/bin/python -m pytest -q --ignore=tests/test_hw_fr3.py
	.venv/bin/python -m pytest -q tests/test_hw_fr3.py

bench: setup
	.venv/bin/python tools/bench_store.py
