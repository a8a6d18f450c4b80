"""Stand-ins that speak the real device protocols, for the hardware backend tests."""
