"""Pretrained encoder files the user supplies, and the run checkpoints training writes.

Pretrained files (the layouts their upstream projects release), each loaded into one encoder:
- R3M (`load_r3m_encoder`): `{'r3m': state_dict}` of a DataParallel R3M; the ResNet18 sits under
  `module.convnet.` (120 keys, no fc); `module.lang_rew.*`, `module.lang_enc.*` and other heads are ignored.
- AVID (`load_avid_audio`): `{'epoch', 'model', 'optimizer', 'train_criterion'}`; only `model`'s
  `module.audio_model.*` (54 keys) is used. The file is memory-mapped, so the ~1.8 GB memory bank in
  `train_criterion` is never read (files in torch's legacy pre-1.6 format cannot be mapped and are read
  whole); `train_criterion` need not exist.
- BYOL-A (`load_byol_a`): a plain AudioNTT2020 state dict (`features.*`, `fc.*`), as a torch file or
  safetensors (what `htouch pretrain byol-a` writes).
Inside the encoder's prefix the keys and shapes must match the encoder exactly, or the file is refused with
one HtouchError naming the file and what is wrong; keys outside it are reported as ignored.
R3M and AVID files that htouch made itself (`htouch pretrain av`) have the same layouts plus one top-level
entry `htouch`: JSON text saying how they were made (`pretraining_record`; `htouch pretrain byol-a` keeps
the same in its safetensors metadata), which the run records beside the file's path so that results can say
which initialisation a policy had (`describe_initialisation`).

Nothing here can run code from a file: torch files are read with `weights_only=True` (tensors, numbers,
strings, containers only), run checkpoints are safetensors + JSON.

A run checkpoint (`save_run_checkpoint` / `load_run_checkpoint`) is a directory with `<name>.safetensors`
(the policy's state dict, spectrogram statistics included) and `config.json`: the PolicyConfig plus the
caller's `extra` (action normalization, the stream specs and sample parameters the policy expects, ...).
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from htouch.dataset.files import replacing
from htouch.dataset.manifest import file_hash
from htouch.errors import HtouchError
from htouch.training.methods import PolicyConfig
from htouch.training.model import AudioVisualPolicy, build_policy
from htouch.training.run_dir import WEIGHTS_NAME, RunDir

RUN_FORMAT = "htouch-policy"
RUN_FORMAT_VERSION = 1

R3M_PREFIX = "module.convnet."
AVID_PREFIX = "module.audio_model."
PRETRAINING_KEY = "htouch"  # top-level entry of an htouch-made R3M / AVID file: JSON text, how it was made


@dataclass
class LoadReport:
    """What a pretrained file gave: which encoder, how many tensors, and what was left aside."""

    path: Path
    layout: str  # "r3m", "avid", "byol-a"
    loaded: int  # tensors copied into the encoder
    ignored: dict[str, int] = field(default_factory=dict)  # key group -> count, outside the encoder's prefix
    made_by: dict[str, Any] | None = None  # the file's pretraining record (htouch-made files), else None
    encoder: str = ""  # the policy attribute it initialised (set by load_pretrained)

    def summary(self) -> str:
        ignored = ", ".join(f"{n} under {g}" for g, n in sorted(self.ignored.items()))
        made = f", made by {describe_pretraining(self.made_by)}" if self.made_by else ""
        return (f"{self.layout}: {self.loaded} tensors from {self.path}{made}" +
                (f" (ignored {ignored})" if ignored else ""))


# ------------------------------------------------------------------------------------------ reading files


def read_weights_file(path: str | Path) -> Any:
    """The object stored in a torch or safetensors file, without ever running code from it."""
    path = Path(path)
    if not path.is_file():
        raise HtouchError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise HtouchError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        try:  # mmap: tensors are read only when used (AVID's memory bank never is)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zipfile" not in str(e).lower():
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-1.6) format
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise HtouchError(f"{path}: refused: it holds Python objects other than weights ({found.group(1)}), "
                              "and loading them could run code") from None
        raise HtouchError(f"{path}: not a readable torch checkpoint (not a pickle of weights)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HtouchError(f"{path}: not a readable torch checkpoint ({first})") from None


def _key_groups(keys: list[str], depth: int = 2) -> list[str]:
    """'module.lang_rew.pred.0.weight' -> 'module.lang_rew.' (the first `depth` dotted parts)."""
    return sorted(Counter(".".join(k.split(".")[:depth]) + "." for k in keys))


def _state_dict(obj: Any, path: Path, layout: str, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise HtouchError(f"{path}: not a {layout} checkpoint: {where} is not a state dict "
                          f"(found {type(obj).__name__})")
    return obj


def load_encoder_weights(module: nn.Module, state: dict[str, Any], prefix: str, path: Path, layout: str) -> LoadReport:
    """Copy `state[prefix + key]` into `module` for every key of the module, refusing any mismatch."""
    own = module.state_dict()
    inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    outside = [k for k in state if not k.startswith(prefix)]
    what = f"keys under {prefix!r}" if prefix else "encoder keys"
    if not inside:
        found = ", ".join(_key_groups(list(state), 1 if not prefix else 2)[:6]) or "nothing"
        raise HtouchError(f"{path}: not a {layout} checkpoint: no {what} (found {found})")
    missing = sorted(set(own) - set(inside))
    unexpected = sorted(set(inside) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {prefix}{missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {prefix}{unexpected[0]})")
        raise HtouchError(f"{path}: {layout} {what} do not match the encoder: {'; '.join(parts)}")
    for k, mine in own.items():
        theirs = inside[k]
        if not isinstance(theirs, torch.Tensor):
            raise HtouchError(f"{path}: {layout} entry {prefix}{k} is not a tensor ({type(theirs).__name__})")
        if tuple(theirs.shape) != tuple(mine.shape):
            raise HtouchError(f"{path}: {layout} tensor {prefix}{k} has shape {tuple(theirs.shape)}, the encoder "
                              f"needs {tuple(mine.shape)} (a different network or model size)")
        if theirs.is_floating_point() and not torch.isfinite(theirs).all():
            raise HtouchError(f"{path}: {layout} tensor {prefix}{k} holds NaN or infinite values")
    module.load_state_dict(inside, strict=True)
    groups = Counter(".".join(k.split(".")[:2]) + "." for k in outside)  # other heads: reported, not refused
    return LoadReport(path=path, layout=layout, loaded=len(inside), ignored=dict(groups))


def load_r3m_encoder(path: str | Path, module: nn.Module) -> LoadReport:
    """R3M's ResNet18 (`{'r3m': state_dict}`, prefix module.convnet.) into a `encoders.resnet18` module."""
    path = Path(path)
    obj = read_weights_file(path)
    if not isinstance(obj, dict) or "r3m" not in obj:
        keys = ", ".join(map(str, list(obj)[:5])) if isinstance(obj, dict) else type(obj).__name__
        raise HtouchError(f"{path}: not an R3M checkpoint: expected a dict with an 'r3m' entry, found {keys}")
    state = _state_dict(obj["r3m"], path, "R3M", "'r3m'")
    return _load_recorded(module, obj, state, R3M_PREFIX, path, "R3M")


def load_avid_audio(path: str | Path, module: nn.Module) -> LoadReport:
    """AVID-CMA's audio network (`model` entry, prefix module.audio_model.) into an `AvidConv2D`."""
    path = Path(path)
    obj = read_weights_file(path)
    if not isinstance(obj, dict) or "model" not in obj:
        keys = ", ".join(map(str, list(obj)[:5])) if isinstance(obj, dict) else type(obj).__name__
        raise HtouchError(f"{path}: not an AVID checkpoint: expected a dict with a 'model' entry, found {keys}")
    state = _state_dict(obj["model"], path, "AVID", "'model'")
    return _load_recorded(module, obj, state, AVID_PREFIX, path, "AVID")


def pretraining_record(obj: dict[str, Any], path: Path, defaults: dict[str, str] | None = None
                       ) -> dict[str, Any] | None:
    """How an htouch-made file was made (its `htouch` entry, JSON text, completed by `defaults`), None for a
    third-party file."""
    text = obj.get(PRETRAINING_KEY)
    if text is None:
        return None
    try:
        record = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        record = None
    if isinstance(record, dict):
        record = {**(defaults or {}), **record}
    if not isinstance(record, dict) or not isinstance(record.get("made_by"), str):
        raise HtouchError(f"{path}: its {PRETRAINING_KEY!r} entry is not the JSON record htouch writes (damaged?)")
    return record


def _load_recorded(module: nn.Module, obj: dict[str, Any], state: dict[str, Any], prefix: str, path: Path,
                   layout: str, defaults: dict[str, str] | None = None) -> LoadReport:
    """load_encoder_weights, with the file's pretraining record attached (and named when the file is refused,
    since a size mismatch then usually means a file made for another preset)."""
    record = pretraining_record(obj, path, defaults)
    try:
        report = load_encoder_weights(module, state, prefix, path, layout)
    except HtouchError as e:
        if record is None:
            raise
        raise HtouchError(f"{e}; the file was made by {describe_pretraining(record)}") from None
    report.made_by = record
    return report


def describe_pretraining(record: dict[str, Any]) -> str:
    """One phrase for a pretraining record: `htouch pretrain av` (tiny preset, 5 epochs on play-zip, seed 0)."""
    parts = [f"{record.get('preset')} preset" if record.get("preset") else None,
             f"{record['epochs']} epochs on {Path(str(record['dataset'])).name}"
             if record.get("epochs") is not None and record.get("dataset") else None,
             f"seed {record['seed']}" if record.get("seed") is not None else None]
    inside = ", ".join(p for p in parts if p)
    return f"`{record['made_by']}`" + (f" ({inside})" if inside else "")


def load_byol_a(path: str | Path, module: nn.Module) -> LoadReport:
    """A BYOL-A AudioNTT2020 state dict (features.*, fc.*) into an `AudioNTT2020`."""
    path = Path(path)
    state = _state_dict(read_weights_file(path), path, "BYOL-A", "the file")
    meta = {}
    if path.suffix == ".safetensors":  # `htouch pretrain byol-a` keeps its record in the metadata
        with safetensors.safe_open(str(path), "pt") as f:
            meta = {k: v for k, v in (f.metadata() or {}).items() if k == PRETRAINING_KEY}
    from htouch.training.byol_a import LABEL, MADE_BY

    # files written before the record named its maker: only that command writes this metadata
    return _load_recorded(module, meta, state, "", path, "BYOL-A", defaults={"made_by": MADE_BY, "label": LABEL})


# ------------------------------------------------------------------------------------------ per method

# The pretrained files (the paper, section IV-C): name -> (encoder, loader). Which ones a method starts
# from is its MethodSpec.pretrained (model.METHOD_SPECS).
PRETRAINED = {"r3m": ("image_encoder", load_r3m_encoder), "avid": ("audio_encoder", load_avid_audio),
              "byol-a": ("audio_encoder", load_byol_a)}


def load_pretrained(model: AudioVisualPolicy, files: dict[str, str | Path | None],
                    allow_random: bool = False) -> tuple[list[LoadReport], dict[str, str]]:
    """Initialise the model's encoders for its method from `files` ({"r3m": path, "avid": path, "byol-a":
    path}, None for absent). A file the method does not use is refused (scratch takes no AVID file); a file it
    needs but lacks is refused unless `allow_random`. Returns the reports and, per encoder, where its initial
    weights came from (for the run's config.json)."""
    method = model.config.method
    wanted = model.config.spec.pretrained
    given = {k: v for k, v in files.items() if v is not None}
    unknown = sorted(set(given) - set(PRETRAINED))
    if unknown:
        raise HtouchError(f"unknown pretrained checkpoint kind(s) {', '.join(unknown)}; use {', '.join(PRETRAINED)}")
    unused = sorted(set(given) - set(wanted))
    if unused:
        raise HtouchError(f"method {method} does not use a {' or '.join(unused)} checkpoint "
                          f"(it starts from: {', '.join(wanted)})")
    lacking = [k for k in wanted if k not in given]
    if lacking and not allow_random:
        raise HtouchError(f"method {method} starts from {' and '.join(wanted)} weights: give the "
                          f"{', '.join(lacking)} checkpoint file(s), or allow random initialisation")
    reports, origin = [], {"image_encoder": "random", "audio_encoder": "random" if model.audio_encoder else "none"}
    for kind in wanted:
        if kind in given:
            attr, loader = PRETRAINED[kind]
            report = loader(given[kind], getattr(model, attr))
            report.encoder = attr
            reports.append(report)
            origin[attr] = f"{kind}: {Path(given[kind]).resolve()}"
    return reports, origin


def pretraining_of(reports: list[LoadReport]) -> dict[str, dict[str, Any]]:
    """Per encoder, the pretraining record of the file that initialised it (htouch-made files only): what a
    run stores as `encoder_pretraining` beside `encoders`."""
    return {r.encoder: r.made_by for r in reports if r.made_by}


FILE_LABELS = {"r3m": "R3M file", "avid": "AVID file", "byol-a": "BYOL-A file"}


def describe_initialisation(encoders: dict[str, str], pretraining: dict[str, dict[str, Any]] | None = None
                            ) -> dict[str, str]:
    """Per encoder, a phrase for a results table from a run's `encoders` ("r3m: /path", "random", "none")
    and `encoder_pretraining` entries (config.json and run.json hold both): "random", "none (no audio)",
    "R3M file (r3m.pt)", or "in-domain AV: `htouch pretrain av` (tiny preset, 5 epochs on play-zip, seed 0)"."""
    out = {}
    for name, origin in encoders.items():
        record = (pretraining or {}).get(name)
        if origin in ("random", "none"):
            out[name] = "none (no audio)" if origin == "none" else "random"
        elif record:
            out[name] = f"{record.get('label', 'pretrained')}: {describe_pretraining(record)}"
        else:
            kind, _, path = str(origin).partition(": ")
            out[name] = f"{FILE_LABELS.get(kind, kind)} ({Path(path).name})"
    return out


# ------------------------------------------------------------------------------------------ run checkpoints


def save_run_checkpoint(run_dir: str | Path, model: AudioVisualPolicy, config: PolicyConfig,
                        extra: dict[str, Any] | None = None, name: str = WEIGHTS_NAME) -> Path:
    """Write `<name>.safetensors` and config.json into run_dir (atomically: a crash leaves the old files).
    `extra` must be JSON (normalization statistics, the stream specs and sample parameters it expects, ...)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {"format": RUN_FORMAT, "version": RUN_FORMAT_VERSION, "policy": config.to_dict(), **(extra or {})}
    try:
        text = json.dumps(doc, indent=2, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise HtouchError(f"run checkpoint extra data is not plain JSON ({e})") from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = RunDir(run_dir).weights(name)
    with replacing(weights) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": RUN_FORMAT})
    with replacing(RunDir(run_dir).config) as tmp:
        tmp.write_text(text + "\n")
    return weights


def model_digest(run_dir: str | Path, name: str = WEIGHTS_NAME) -> str | None:
    """XXH3-128 of the run's weights file (None if there is none): names the model an evaluation or a probe
    used, so a result can be matched to the model it measured (file times do not survive a git checkout)."""
    weights = RunDir(run_dir).weights(name)
    return file_hash(weights) if weights.is_file() else None


def read_run_config(run_dir: str | Path) -> tuple[PolicyConfig, dict[str, Any]]:
    """The PolicyConfig and the extra entries of a run directory's config.json."""
    run_dir = Path(run_dir)
    path = RunDir(run_dir).config
    if not run_dir.is_dir():
        raise HtouchError(f"{run_dir}: no such run directory")
    if not path.is_file():
        raise HtouchError(f"{run_dir}: not a policy run directory (no {path.name})")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HtouchError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT:
        raise HtouchError(f"{path}: not an htouch policy config (format {RUN_FORMAT!r} expected)")
    if doc.get("version") != RUN_FORMAT_VERSION:
        raise HtouchError(f"{path}: policy format version {doc.get('version')} is not supported "
                          f"(this htouch reads version {RUN_FORMAT_VERSION})")
    if not isinstance(doc.get("policy"), dict):
        raise HtouchError(f"{path}: no 'policy' configuration")
    config = PolicyConfig.from_dict(doc["policy"])
    extra = {k: v for k, v in doc.items() if k not in ("format", "version", "policy")}
    return config, extra


def load_run_checkpoint(run_dir: str | Path, name: str = WEIGHTS_NAME) -> tuple[AudioVisualPolicy, PolicyConfig,
                                                                                 dict[str, Any]]:
    """The policy (in eval mode), its config and the extra entries saved by `save_run_checkpoint`."""
    run_dir = Path(run_dir)
    config, extra = read_run_config(run_dir)
    weights = RunDir(run_dir).weights(name)
    if not weights.is_file():
        raise HtouchError(f"{run_dir}: no weights file {weights.name}")
    try:
        state = safetensors.torch.load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise HtouchError(f"{weights}: corrupt or unreadable weights ({e})") from None
    model = build_policy(config)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise HtouchError(f"{weights}: weights do not match the {config.method} policy of config.json "
                          f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. "
                          f"{(missing or unexpected)[0]})")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise HtouchError(f"{weights}: tensor {bad[0]} has shape {tuple(state[bad[0]].shape)}, the policy of "
                          f"config.json needs {tuple(own[bad[0]].shape)}")
    model.load_state_dict(state, strict=True)
    return model.eval(), config, extra
