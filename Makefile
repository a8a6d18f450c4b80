# The two commands of the README: `make demo` and `make test`. Both set up a fresh machine first.
.PHONY: setup demo test bench
DATA ?= demo_data

setup:
	@tools/setup.sh

demo: setup
	.venv/bin/htouch synth $(DATA) --episodes 3 --seconds 8
	.venv/bin/htouch ls $(DATA)
	.venv/bin/htouch validate $(DATA)
	.venv/bin/htouch inspect $(DATA)/episode_000001 --plot $(DATA)/episode_000001.png

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python tools/bench_store.py
