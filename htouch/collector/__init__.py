"""Devices, teleoperation mapping, safety and the recording loop (docs/collect.md, docs/teleop-and-robot.md)."""
