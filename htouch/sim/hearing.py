"""What hearing is worth in a simulated task, before any learning.

The scripted operator as it is (it stops when it hears the decisive contact) and the same operator deaf
(it stops where that contact is in the average episode) each drive the same scenes: episode 1..n of one
seed, through the clutch mapping and the safety filter, without recording. The difference of their success
rates bounds what a policy can gain from audio in the task: where the deaf operator does as well, no
experiment can show an audio effect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from scipy.stats import binomtest

from htouch.sim.operator import ScriptedOperator, drive
from htouch.sim.rig import SimRig

CONFIDENCE = 0.95


@dataclass
class SceneResult:
    episode: int  # the scene: episode number of the rig's seed
    success: bool
    damaged: bool  # the task's fragile part broke
    progress: float
    seconds: float  # simulated


@dataclass
class OperatorResult:
    task: str
    deaf: bool
    seed: int
    scenes: list[SceneResult]

    @property
    def successes(self) -> int:
        return sum(s.success for s in self.scenes)

    @property
    def damaged(self) -> int:
        return sum(s.damaged for s in self.scenes)

    @property
    def rate(self) -> float:
        return self.successes / len(self.scenes) if self.scenes else 0.0

    def interval(self) -> tuple[float, float]:
        """Wilson score interval of the success rate."""
        ci = binomtest(self.successes, len(self.scenes)).proportion_ci(CONFIDENCE, method="wilson")
        return float(ci.low), float(ci.high)

    def to_dict(self) -> dict:
        return {"task": self.task, "deaf": self.deaf, "seed": self.seed,
                "scenes": [asdict(s) for s in self.scenes]}

    @classmethod
    def from_dict(cls, d: dict) -> OperatorResult:
        return cls(d["task"], bool(d["deaf"]), int(d["seed"]), [SceneResult(**s) for s in d["scenes"]])


def run_operator(task: str, episodes: int, seed: int, deaf: bool, variation: str = "train",
                 max_seconds: float | None = None,
                 on_scene: Callable[[SceneResult], None] | None = None) -> OperatorResult:
    """Drive scenes 1..episodes of `seed` with the scripted operator (deaf or hearing); no camera, no audio
    synthesis (the operator's ears are the physics' heard contacts), so a scene takes seconds."""
    scenes = []
    with SimRig(task, variation, seed=seed) as rig:
        limit = rig.task.max_seconds + 5.0 if max_seconds is None else max_seconds
        for _ in range(episodes):
            operator = ScriptedOperator(rig, seed=seed, deaf=deaf)
            outcome = drive(rig, operator, max_seconds=limit)
            scene = SceneResult(rig.episode_index, outcome.success, rig.task.damage is not None,
                                round(outcome.progress, 4), round(outcome.seconds, 3))
            scenes.append(scene)
            if on_scene is not None:
                on_scene(scene)
    return OperatorResult(task, deaf, seed, scenes)


def compare(task: str, episodes: int, seed: int,
            on_scene: Callable[[bool, SceneResult], None] | None = None) -> tuple[OperatorResult, OperatorResult]:
    """The hearing and the deaf operator on scenes 1..episodes of `seed`: (hearing, deaf)."""
    results = []
    for deaf in (False, True):
        report = None if on_scene is None else (lambda s, d=deaf: on_scene(d, s))
        results.append(run_operator(task, episodes, seed, deaf, on_scene=report))
    return results[0], results[1]
