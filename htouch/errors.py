"""Errors a user can cause and fix. The CLI prints them as one line, without a traceback."""


class HtouchError(Exception):
    """A problem with the user's input or data: a missing path, a bad name, a corrupt store."""


class DatasetError(HtouchError):
    """A dataset or episode is missing, malformed or unreadable."""


class WriterError(HtouchError):
    """The episode writer failed (disk full, closed writer, ...); data flushed so far stays on disk."""


class DeviceError(HtouchError):
    """A device failed or is missing (camera, microphones, teleop, robot). The recording loop records it as an
    event and goes on where it can; a command that cannot go on prints it as one line."""


class DamagedEpisodeError(DatasetError):
    """An episode failed the structural checks readers run before using it (see dataset/structure.py)."""

    def __init__(self, episode: str, problem: str):
        self.episode = episode
        self.problem = problem
        super().__init__(f"{episode} is damaged: {problem} (`htouch validate` lists every problem)")
