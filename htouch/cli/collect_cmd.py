"""`htouch collect` and `htouch rig check`: record episodes on the simulated or the real rig."""
