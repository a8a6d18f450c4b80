"""Datasets that travel: htouch datasets exported into the formats other robot-learning tools read, imported from
LeRobot's, and shown in rerun's viewer.

- `lerobot.py`: the LeRobot dataset format v3.0 (parquet + MP4, audio as a per-frame feature and a lossless sidecar);
- `dp.py`: a Diffusion Policy / ManiWAV replay buffer (`.zarr.zip`);
- `lerobot_import.py`: the other way, a LeRobot v3.0 dataset read into a new htouch dataset (`htouch import lerobot`);
- `rerun_view.py`: one episode in the rerun viewer or an .rrd file (`htouch view`);
- `common.py`: what both share: the validation gate, the temporary directory renamed into place, and the mapping of
  an episode's measured time stamps onto a fixed frame grid.

This package reads htouch datasets through `htouch.dataset`; nothing in `htouch.dataset` imports it.
docs/interop.md describes the layouts and how they were checked with the real libraries.
"""

FORMATS = ("lerobot", "dp")
