# The two commands of the README: `make demo` and `make test`. Both set up a fresh machine first.
.PHONY: setup demo lint test bench
DATA ?= demo_data

setup:
	@tools/setup.sh

demo: setup
	.venv/bin/htouch collect $(DATA) --task zip --episodes 3 --no-panel
	.venv/bin/htouch ls $(DATA)
	.venv/bin/htouch validate $(DATA)
	.venv/bin/htouch inspect $(DATA)/episode_000000 --plot $(DATA)/episode_000000.png
	.venv/bin/htouch replay $(DATA)/episode_000000 --to video $(DATA)/episode_000000.mp4

# ruff's configuration is in pyproject.toml; the tests run only on code that passes it
lint: setup
	.venv/bin/ruff check .

test: setup lint
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python tools/bench_store.py
