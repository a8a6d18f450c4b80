"""docs/format.md promises that plain zarr + imagecodecs opens an episode, a directory or a packed file; check it
without importing htouch."""

import subprocess
import sys
import textwrap

import pytest

from htouch.dataset.packed import pack_episode


@pytest.mark.parametrize("packed", [False, True], ids=["directory", "packed"])
def test_open_episode_with_plain_zarr(tiny_ds, packed):
    if packed:  # htouch pack: the same group in one zip file, opened with zarr's ZipStore
        pack_episode(tiny_ds, 0)
        store = f"zarr.storage.ZipStore({str(tiny_ds.root / 'episode_000000.zip')!r}, mode='r')"
    else:
        store = repr(str(tiny_ds.episode_path(0)))
    script = textwrap.dedent(f"""
        import sys
        import imagecodecs.numcodecs, zarr
        imagecodecs.numcodecs.register_codecs()
        ep = zarr.open_group({store}, mode="r", zarr_format=2)
        frames = ep["camera/rgb"][:10]
        assert frames.shape == (10, 48, 64, 3) and frames.dtype == "uint8", frames.shape
        assert ep["audio/pcm"][:].shape[1] == 4
        assert ep["camera/timestamp_ns"].shape[0] == ep["camera/rgb"].shape[0]
        assert ep.attrs["htouch_episode"]["index"] == 0
        assert not any(m.startswith("htouch") for m in sys.modules), "htouch was imported"
        print("ok", frames.mean())
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")
