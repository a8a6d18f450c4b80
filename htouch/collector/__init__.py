"""Devices, teleoperation mapping, safety and the recording loop (see the collector issue)."""
