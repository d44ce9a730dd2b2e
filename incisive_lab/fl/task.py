"""Federated tasks: code a node's steward approves by hash, and what the Flower app calls.

A *task* is a small directory of Python (``*.py``) and JSON (``*.json``) files with a
``task.py`` at its top (the built-in ones are under :mod:`incisive_lab.fl.tasks`). It is
moved around as :class:`TaskCode` — the files' bytes — and identified by
:attr:`TaskCode.sha256`, the hash a steward approves (``incisive-lab fl approve``) and every
node checks before it runs anything. :func:`load` executes ``task.py`` in a fresh module
namespace and wraps it as a :class:`LoadedTask`.

What ``task.py`` defines
------------------------
``NAME``, ``VERSION`` (strings)
    The task's name and version (read without executing the code; they are inside the hash).
``build_model(config) -> torch.nn.Module``
    A fresh model; ``config["seed"]`` seeds its initialisation.
``load_data(reader, config) -> LocalData``
    The node's samples, read only through the :class:`~incisive_lab.fl.data.CohortReader`
    (labels only from what the node holds: FHIR and DICOM attributes), split into train and
    test by patient with :func:`split_by_patient`.
``train``, ``evaluate``, ``label_counts`` (optional)
    Override the defaults of this module (:func:`train_supervised`, :func:`evaluate_supervised`,
    :func:`count_labels`), with the same signatures as :class:`LoadedTask`'s methods.
``augment(x, generator) -> x`` (optional)
    Batch augmentation the default trainer applies to training batches.
``DEFAULTS`` (optional dict)
    The task's recommended config (epochs, lr...); :class:`LoadedTask` fills every key the
    caller's config lacks from it.

``task.py`` may import the node's installed libraries (torch, numpy, pydicom) and this
module's helpers; the other files of the task are available to it as ``TASK_FILES`` (a
read-only mapping of path to bytes) — e.g. a JSON of defaults.

The trust model: the hash covers the task's code, name and version, not the node's installed
libraries (as Fed-BioMed's training plans build on its installed ``TorchTrainingPlan``). A
node runs only code whose hash its steward approved; the caller of :func:`load` checks that
first. Loading runs the module's top level, so nothing but approved code may be loaded.

Example
-------
>>> code = builtin("mg-lesion")
>>> code.sha256 == TaskCode.from_bytes(code.to_bytes()).sha256
True
"""

from __future__ import annotations

import ast
import base64
import binascii
import hashlib
import json
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from incisive_lab.fl.data import CohortReader

__all__ = [
    "TASK_FORMAT",
    "LoadedTask",
    "LocalData",
    "Samples",
    "TaskCode",
    "TaskError",
    "builtin",
    "builtin_names",
    "count_labels",
    "evaluate_supervised",
    "load",
    "split_by_patient",
    "train_supervised",
]

#: The serialised form's format tag (also the first line hashed).
TASK_FORMAT = "incisive-fl-task/1"
#: Limits on what a task may hold.
MAX_FILES = 64
MAX_BYTES = 4 * 1024 * 1024
_SUFFIXES = (".py", ".json")
_TASKS_DIR = Path(__file__).resolve().parent / "tasks"
_BUILTIN = {"mg-lesion": "mg_lesion", "ct-nodule": "ct_nodule"}


class TaskError(ValueError):
    """Task code that cannot be used (the message names the parameter or file at fault)."""


def _check_path(path: Any) -> str:
    if not isinstance(path, str) or not path:
        raise TaskError(f"files: a path must be a non-empty string, got {path!r}")
    pure = PurePosixPath(path)
    if (pure.is_absolute() or "\\" in path or any(p in ("", ".", "..") for p in path.split("/"))
            or str(pure) != path):
        raise TaskError(f"files: {path!r} is not a plain relative POSIX path")
    if not path.endswith(_SUFFIXES):
        raise TaskError(f"files: {path!r}: only {', '.join(_SUFFIXES)} files may be in a task")
    return path


def _declared(source: bytes) -> dict[str, str]:
    """Module-level ``NAME = "..."`` / ``VERSION = "..."`` of ``task.py``, without running it."""
    try:
        tree = ast.parse(source, filename="task.py")
    except SyntaxError as exc:
        raise TaskError(f"files: task.py does not parse: {exc.msg} (line {exc.lineno})") from None
    out: dict[str, str] = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id in ("NAME", "VERSION")
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            out[node.targets[0].id] = node.value.value
    return out


def _frame(h: Any, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


@dataclass(frozen=True)
class TaskCode:
    """A task's files, name and version: what a steward approves, by :attr:`sha256`.

    Parameters
    ----------
    name, version
        The task's name and version (non-empty, at most 64 characters).
    files
        Relative POSIX path → content; ``*.py`` and ``*.json`` only, UTF-8, at most
        :data:`MAX_FILES` files and :data:`MAX_BYTES` in all; must contain ``task.py``. When
        ``task.py`` declares ``NAME``/``VERSION`` they must equal ``name``/``version``.

    Raises
    ------
    TaskError
        Any of the above does not hold (the message names the field or file).
    """

    name: str
    version: str
    files: Mapping[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        for label, value in (("name", self.name), ("version", self.version)):
            if not isinstance(value, str) or not value or len(value) > 64 or not value.isprintable():
                raise TaskError(f"{label}: expected a printable string of 1-64 characters, got {value!r}")
        if not isinstance(self.files, Mapping):
            raise TaskError(f"files: expected a mapping of path to bytes, got {type(self.files).__name__}")
        if len(self.files) > MAX_FILES:
            raise TaskError(f"files: {len(self.files)} files; a task holds at most {MAX_FILES}")
        total = 0
        clean: dict[str, bytes] = {}
        for path in sorted(self.files):
            content = self.files[path]
            _check_path(path)
            if not isinstance(content, bytes):
                raise TaskError(f"files: {path!r}: content must be bytes, got {type(content).__name__}")
            try:
                content.decode("utf-8")
            except UnicodeDecodeError:
                raise TaskError(f"files: {path!r} is not UTF-8 text") from None
            total += len(content)
            clean[path] = content
        if total > MAX_BYTES:
            raise TaskError(f"files: {total} bytes; a task holds at most {MAX_BYTES}")
        if "task.py" not in clean:
            raise TaskError("files: a task must contain task.py at its top")
        declared = _declared(clean["task.py"])
        for key, attr in (("NAME", "name"), ("VERSION", "version")):
            if key in declared and declared[key] != getattr(self, attr):
                raise TaskError(f"{attr}: {getattr(self, attr)!r} differs from task.py's "
                                f"{key} = {declared[key]!r}")
        object.__setattr__(self, "files", MappingProxyType(clean))

    @property
    def sha256(self) -> str:
        """The task's hash (hex): over the format tag, name, version and every file's path
        and content in path order, each length-prefixed (so no two tasks frame the same)."""
        h = hashlib.sha256()
        _frame(h, TASK_FORMAT.encode())
        _frame(h, self.name.encode())
        _frame(h, self.version.encode())
        h.update(len(self.files).to_bytes(8, "big"))
        for path in sorted(self.files):
            _frame(h, path.encode())
            _frame(h, self.files[path])
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        """Deterministic bytes (canonical JSON, files base64; the same task → the same bytes)."""
        doc = {"format": TASK_FORMAT, "name": self.name, "version": self.version,
               "sha256": self.sha256,
               "files": {p: base64.b64encode(c).decode("ascii") for p, c in sorted(self.files.items())}}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> TaskCode:
        """Parse and check :meth:`to_bytes`'s output.

        Raises
        ------
        TaskError
            Not bytes, not the format, a missing or mistyped field, a bad path or file, or
            a ``sha256`` that does not match the content (the message says which).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TaskError(f"data: expected bytes, got {type(data).__name__}")
        raw = bytes(data)
        if len(raw) > 2 * MAX_BYTES:
            raise TaskError(f"data: {len(raw)} bytes is too large for a task")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TaskError(f"data: not a serialised task ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != TASK_FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise TaskError(f"data: format {got!r} is not {TASK_FORMAT!r}")
        unknown = set(doc) - {"format", "name", "version", "sha256", "files"}
        if unknown:
            raise TaskError(f"data: unknown fields {sorted(unknown)}")
        files = doc.get("files")
        if not isinstance(files, dict):
            raise TaskError("data: files must be an object of path to base64 content")
        decoded: dict[str, bytes] = {}
        for path, b64 in files.items():
            if not isinstance(b64, str):
                raise TaskError(f"data: files[{path!r}] must be a base64 string")
            try:
                decoded[path] = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise TaskError(f"data: files[{path!r}] is not valid base64") from None
        code = cls(name=doc.get("name"), version=doc.get("version"), files=decoded)  # type: ignore[arg-type]
        if doc.get("sha256") != code.sha256:
            raise TaskError(f"data: sha256 {doc.get('sha256')!r} does not match the content "
                            f"({code.sha256})")
        return code

    @classmethod
    def from_dir(cls, path: str | Path, *, name: str | None = None,
                 version: str | None = None) -> TaskCode:
        """Read a task directory: every ``*.py`` and ``*.json`` file under it.

        ``__pycache__`` folders and hidden entries are skipped; any other file type and any
        symbolic link are refused. ``name``/``version`` default to ``task.py``'s ``NAME`` /
        ``VERSION``.

        Raises
        ------
        TaskError
            Not a directory, a symbolic link, a file of another type, or no name/version.
        """
        root = Path(path)
        if root.is_symlink() or not root.is_dir():
            raise TaskError(f"path: {root} is not a directory (or is a symbolic link)")
        files: dict[str, bytes] = {}
        for entry in sorted(root.rglob("*")):
            rel = entry.relative_to(root)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            if entry.is_symlink():
                raise TaskError(f"path: {rel.as_posix()} is a symbolic link; a task is plain files")
            if entry.is_dir():
                continue
            if not entry.is_file() or not entry.name.endswith(_SUFFIXES):
                raise TaskError(f"path: {rel.as_posix()}: only {', '.join(_SUFFIXES)} files may be "
                                "in a task directory")
            files[rel.as_posix()] = entry.read_bytes()
        if "task.py" not in files:
            raise TaskError(f"path: {root} has no task.py")
        declared = _declared(files["task.py"])
        name = name if name is not None else declared.get("NAME")
        version = version if version is not None else declared.get("VERSION")
        if name is None or version is None:
            raise TaskError(f"path: {root}/task.py declares no NAME/VERSION; pass name= and version=")
        return cls(name=name, version=version, files=files)


def builtin_names() -> list[str]:
    """Names of the built-in tasks."""
    return sorted(_BUILTIN)


def builtin(name: str) -> TaskCode:
    """A built-in task's code (``"mg-lesion"``, ``"ct-nodule"``).

    Raises
    ------
    ValueError
        An unknown name (the message lists the known ones).
    """
    if name not in _BUILTIN:
        raise ValueError(f"task {name!r}: not a built-in task; known: {', '.join(builtin_names())}")
    return TaskCode.from_dir(_TASKS_DIR / _BUILTIN[name])


# ------------------------------------------------------------------------- data


class Samples:
    """Labelled samples held as tensors (a ``torch.utils.data.Dataset``).

    Parameters
    ----------
    x
        Inputs, first dimension the sample.
    y
        Integer class labels, one per sample.
    patients
        The ``(dataset, patient)`` of each sample (for patient-level bookkeeping).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor,
                 patients: Sequence[tuple[str, str]] = ()) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"y: {y.shape[0]} labels for {x.shape[0]} samples")
        if patients and len(patients) != x.shape[0]:
            raise ValueError(f"patients: {len(patients)} entries for {x.shape[0]} samples")
        self.x = x
        self.y = y.long()
        self.patients = tuple(patients)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __repr__(self) -> str:
        return f"Samples({len(self)} x {tuple(self.x.shape[1:])})"

    @property
    def labels(self) -> list[int]:
        """The labels as a list."""
        return [int(v) for v in self.y.tolist()]

    @classmethod
    def stack(cls, items: Sequence[tuple[torch.Tensor, int, tuple[str, str]]],
              shape: Sequence[int]) -> Samples:
        """Samples from ``(x, label, (dataset, patient))`` items (empty: ``shape`` per sample)."""
        import torch

        if not items:
            return cls(torch.zeros((0, *shape)), torch.zeros(0, dtype=torch.long))
        return cls(torch.stack([x for x, _, _ in items]),
                   torch.tensor([y for _, y, _ in items], dtype=torch.long),
                   [p for _, _, p in items])


@dataclass(frozen=True)
class LocalData:
    """One node's samples for a run, split into train and test by patient.

    Attributes
    ----------
    train, test : torch.utils.data.Dataset
        The splits (:class:`Samples` for the built-in tasks).
    patients : frozenset of str
        Pseudonyms of the patients whose data the samples come from.
    datasets : frozenset of str
        The datasets they belong to.
    classes : tuple of str
        Class names, indexed by label.
    """

    train: Any
    test: Any
    patients: frozenset[str]
    datasets: frozenset[str]
    classes: tuple[str, ...] = ("negative", "positive")


def split_by_patient(keys: Sequence[tuple[str, str]], test_fraction: float = 0.25, *,
                     salt: str = "") -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Deterministic train/test split of ``(dataset, patient)`` keys, by a hash of each key.

    A patient's side depends only on its key and ``salt``, never on who else is there: the
    same patient is in the same split at its node and in a centralised run.

    Returns
    -------
    (train, test)
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction: {test_fraction!r} is not in [0, 1)")
    train: set[tuple[str, str]] = set()
    test: set[tuple[str, str]] = set()
    for dataset, patient in keys:
        digest = hashlib.sha256(f"{salt}\x1f{dataset}\x1f{patient}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
        (test if u < test_fraction else train).add((dataset, patient))
    return train, test


# ------------------------------------------------------------------------- training


def _as_tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    if isinstance(ds, Samples):
        return ds.x, ds.y
    items = [ds[i] for i in range(len(ds))]
    if not items:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return (torch.stack([torch.as_tensor(x) for x, _ in items]),
            torch.tensor([int(y) for _, y in items], dtype=torch.long))


def _get(config: Mapping[str, Any], key: str, default: Any, kind: type) -> Any:
    value = config.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"config[{key!r}]: expected {kind.__name__}, got {value!r}")
    return value


def train_supervised(model: torch.nn.Module, data: LocalData, config: Mapping[str, Any], *,
                     global_state: Mapping[str, torch.Tensor] | None = None,
                     augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                     ) -> dict[str, float]:
    """Train ``model`` on ``data.train`` with cross-entropy (the default ``train``).

    Config keys: ``epochs`` (int, 1), ``lr`` (float, 1e-3, Adam), ``batch_size`` (int, 16),
    ``proximal_mu`` (float, 0: FedAvg; > 0 adds FedProx's ``mu/2 * ||w - w_global||²`` against
    ``global_state``, which it then requires), ``seed`` (int, 0: batch order and augmentation),
    ``class_weighting`` (bool, true: classes weighted inversely to their local frequency, so
    a rare class is not ignored), ``weight_decay`` (float, 0).

    Returns
    -------
    dict
        ``train_loss`` (mean over the last epoch's samples, without the proximal term),
        ``train_accuracy`` (last epoch), ``num_examples``, ``proximal_term`` (last batch).
    """
    import torch

    epochs = _get(config, "epochs", 1, int)
    lr = _get(config, "lr", 1e-3, float)
    batch_size = _get(config, "batch_size", 16, int)
    mu = _get(config, "proximal_mu", 0.0, float)
    seed = _get(config, "seed", 0, int)
    weighting = _get(config, "class_weighting", True, bool)
    weight_decay = _get(config, "weight_decay", 0.0, float)
    if epochs < 1 or batch_size < 1 or lr <= 0 or mu < 0 or weight_decay < 0:
        raise ValueError(f"config: epochs {epochs}, batch_size {batch_size}, lr {lr}, proximal_mu {mu}, "
                         f"weight_decay {weight_decay}: out of range")
    if mu > 0 and global_state is None:
        raise ValueError("global_state: FedProx (proximal_mu > 0) needs the global model's state")
    x, y = _as_tensors(data.train)
    n = int(x.shape[0])
    if n == 0:
        return {"train_loss": 0.0, "train_accuracy": 0.0, "num_examples": 0, "proximal_term": 0.0}
    n_classes = max(len(data.classes), int(y.max()) + 1)
    weight = None
    if weighting:
        counts = torch.bincount(y, minlength=n_classes).float()
        present = counts > 0
        weight = torch.zeros(n_classes)
        weight[present] = n / (present.sum() * counts[present])
    anchors: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    if mu > 0:
        assert global_state is not None
        for pname, param in model.named_parameters():
            if pname not in global_state:
                raise ValueError(f"global_state: no entry for parameter {pname!r}")
            anchors.append((param, global_state[pname].detach().to(param.dtype).clone()))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight, reduction="sum")
    model.train()
    total = correct = 0.0
    prox_value = 0.0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = correct = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb, gen)
            logits = model(xb)
            norm = weight[yb].sum() if weight is not None else torch.tensor(float(len(idx)))
            loss = loss_fn(logits, yb) / norm
            objective = loss
            if anchors:
                prox = torch.stack([((p - g) ** 2).sum() for p, g in anchors]).sum()
                objective = loss + mu / 2.0 * prox
                prox_value = float(prox.detach())
            opt.zero_grad()
            objective.backward()
            opt.step()
            with torch.no_grad():
                total += float(torch.nn.functional.cross_entropy(logits, yb, reduction="sum"))
                correct += float((logits.argmax(1) == yb).sum())
    return {"train_loss": total / n, "train_accuracy": correct / n, "num_examples": n,
            "proximal_term": prox_value}


def evaluate_supervised(model: torch.nn.Module, data: LocalData, *,
                        batch_size: int = 64) -> dict[str, float]:
    """Loss, accuracy and number of examples of ``model`` on ``data.test`` (the default
    ``evaluate``). An empty test split gives zeros with ``num_examples`` 0."""
    import torch

    x, y = _as_tensors(data.test)
    n = int(x.shape[0])
    if n == 0:
        return {"loss": 0.0, "accuracy": 0.0, "num_examples": 0}
    model.eval()
    loss = correct = 0.0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            logits = model(x[start:start + batch_size])
            yb = y[start:start + batch_size]
            loss += float(torch.nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += float((logits.argmax(1) == yb).sum())
    if not math.isfinite(loss):
        raise FloatingPointError("evaluate: the loss is not finite")
    return {"loss": loss / n, "accuracy": correct / n, "num_examples": n}


def count_labels(data: LocalData) -> dict[str, int]:
    """Samples per class name over both splits (the default ``label_counts``)."""
    counts = dict.fromkeys(data.classes, 0)
    for split in (data.train, data.test):
        labels = split.labels if isinstance(split, Samples) else [int(split[i][1]) for i in range(len(split))]
        for label in labels:
            name = data.classes[label] if 0 <= label < len(data.classes) else str(label)
            counts[name] = counts.get(name, 0) + 1
    return counts


# ------------------------------------------------------------------------- loading


class LoadedTask:
    """A task's module, executed, behind the interface the Flower app calls.

    Made by :func:`load`. Attributes ``name``, ``version`` and ``sha256`` come from the
    :class:`TaskCode`; ``module`` is the executed ``task.py``.
    """

    def __init__(self, code: TaskCode, module: types.ModuleType) -> None:
        self.name = code.name
        self.version = code.version
        self.sha256 = code.sha256
        self.module = module
        for required in ("build_model", "load_data"):
            if not callable(getattr(module, required, None)):
                raise TaskError(f"task {code.name!r}: task.py defines no {required}()")
        defaults = getattr(module, "DEFAULTS", {})
        if not isinstance(defaults, Mapping):
            raise TaskError(f"task {code.name!r}: DEFAULTS is not a mapping")
        self.defaults: Mapping[str, Any] = MappingProxyType(dict(defaults))

    def config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` with the task's :attr:`defaults` filled in where it has no value."""
        if not isinstance(config, Mapping):
            raise TaskError(f"config: expected a mapping, got {type(config).__name__}")
        return {**self.defaults, **config}

    def __repr__(self) -> str:
        return f"LoadedTask({self.name!r}, {self.version!r}, {self.sha256[:12]})"

    def build_model(self, config: Mapping[str, Any]) -> torch.nn.Module:
        """A fresh model (``config["seed"]`` seeds its initialisation)."""
        model: torch.nn.Module = self.module.build_model(self.config(config))
        return model

    def load_data(self, reader: CohortReader, config: Mapping[str, Any]) -> LocalData:
        """The node's samples, read through ``reader`` only."""
        data = self.module.load_data(reader, self.config(config))
        if not isinstance(data, LocalData):
            raise TaskError(f"task {self.name!r}: load_data returned {type(data).__name__}, "
                            "not LocalData")
        return data

    def train(self, model: torch.nn.Module, data: LocalData, config: Mapping[str, Any], *,
              global_state: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Train ``model`` in place; see :func:`train_supervised` for the config keys."""
        cfg = self.config(config)
        fn = getattr(self.module, "train", None)
        if callable(fn):
            return dict(fn(model, data, cfg, global_state=global_state))
        return train_supervised(model, data, cfg, global_state=global_state,
                                augment=getattr(self.module, "augment", None))

    def evaluate(self, model: torch.nn.Module, data: LocalData) -> dict[str, float]:
        """``loss``, ``accuracy``, ``num_examples`` on the test split."""
        fn = getattr(self.module, "evaluate", None)
        if callable(fn):
            return dict(fn(model, data))
        return evaluate_supervised(model, data)

    def label_counts(self, data: LocalData) -> dict[str, int]:
        """Samples per class (for class balance; the caller applies the floor rules)."""
        fn = getattr(self.module, "label_counts", None)
        if callable(fn):
            return {str(k): int(v) for k, v in fn(data).items()}
        return count_labels(data)


def load(code: TaskCode) -> LoadedTask:
    """Execute ``code``'s ``task.py`` in a fresh module namespace (not in ``sys.modules``).

    The caller must have checked that ``code.sha256`` is approved: loading runs the code.

    Raises
    ------
    TaskError
        ``code`` is not a :class:`TaskCode`, or ``task.py`` lacks ``build_model``/``load_data``.
    Exception
        Whatever the task's top level raises.
    """
    if not isinstance(code, TaskCode):
        raise TaskError(f"code: expected a TaskCode, got {type(code).__name__}")
    sha = code.sha256
    module = types.ModuleType(f"incisive_fl_task_{sha[:16]}",
                              f"Federated task {code.name} {code.version} ({sha[:12]})")
    filename = f"<task {code.name} {code.version} {sha[:12]}>/task.py"
    module.__file__ = filename
    module.__dict__["TASK_FILES"] = code.files
    module.__dict__["TASK_SHA256"] = sha
    exec(compile(code.files["task.py"], filename, "exec"), module.__dict__)
    return LoadedTask(code, module)
