"""Hardware backends for the real rig. Each imports its device library lazily, so htouch runs without
the optional `htouch[hardware]` extra until a real device is asked for."""
