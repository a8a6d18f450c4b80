"""The simulated rig: a MuJoCo scene, synthesized contact audio, the three tasks and a scripted operator.

It implements the collector's device interfaces (htouch.collector.devices), so the same recording loop and
writer record it as a real rig."""
