"""Defaults of evaluation and of the contact probe that the command line shows in its help, in a module
without torch so that `htouch --help` starts at once. The modules that use them import them from here."""

DEFAULT_SEED = 1000  # evaluation scenes: other than those `htouch collect` records by default (seed 0)
TIME_LIMIT_FACTOR = 1.5  # a policy gets this many times the longest training demonstration
CONTACT_EVENT = "contact"  # the event kind the contact probe labels from
CONTACT_WINDOW_S = 0.5  # a probe sample is "in contact" within this long of a contact event
PROBE_STRIDE = 4  # a probe sample at every 4th training sample time (camera frame)
PROBE_FOLDS = 5
BOOTSTRAP = 1000  # bootstrap resamples for the probe's interval
