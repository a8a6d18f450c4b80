"""`htouch replay`: replay an episode's actions on a robot, or render it to a video with its audio."""
