"""The app's preferences, persisted with QSettings in an INI file inside the data dir.

Keeping the file in the data dir (not the platform's registry or plist) puts everything Potluck
writes in one place, and lets tests isolate their settings with a temporary data dir. Values
travel as a plain dataclass (`Preferences`), so dialogs and the controller never touch QSettings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from PySide6.QtCore import QSettings

from engine.paths import resources_dir

SETTINGS_FILE = "settings.ini"
DEMO_CATALOG_NAME = "potluck-demo"


def default_model() -> Path:
    """The model a first run hosts: the small demo model shipped inside the app (it may not be
    built yet: NodeConfig.problem() says so in plain words)."""
    return resources_dir() / "demo-model"


def is_demo_model(ref: str | Path | None) -> bool:
    if not ref:
        return False
    ref = str(ref)
    return ref == DEMO_CATALOG_NAME or Path(ref) == default_model() or Path(ref).name == "demo-model"


@dataclass(frozen=True)
class Preferences:
    # the swarm: host one on this computer (with a model), or join one by its host's address
    swarm_mode: str = "host"  # "host" or "join"
    host_model: str = ""  # checkpoint folder, catalog name or hub id; "" means the demo model
    join_address: str = ""  # the host's multiaddr: /ip4/A.B.C.D/tcp/PORT/p2p/PEER_ID
    listen: str = ""  # HOST:PORT for peer-to-peer traffic; "" keeps the node's default (this computer only)
    api: str = "127.0.0.1:4280"  # the local OpenAI-compatible API (another free port is used if taken)
    # what this computer lends
    contribute: bool = True
    max_memory_gb: float = 0.0  # 0: no cap (the node offers 80% of what is free)
    contribute_only_when_idle: bool = False
    idle_minutes: int = 5
    # the desktop
    start_at_login: bool = False
    lan_discovery: bool = False
    # solo mode: the chat answers from a GGUF model file on this computer (llama.cpp), not the swarm
    solo_mode: bool = False
    solo_model: str = ""  # path of the .gguf file
    # the chat window
    system_prompt: str = ""
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256

    @property
    def model(self) -> str:
        """The model to host: the chosen one, or the demo model."""
        return self.host_model.strip() or str(default_model())

    @property
    def uses_solo(self) -> bool:
        """The chat answers from the solo model file (chosen, and turned on)."""
        return self.solo_mode and bool(self.solo_model.strip())

    def with_(self, **changes) -> "Preferences":
        return replace(self, **changes)

    def node_fields(self) -> dict:
        """What the node process is started with: a change to these restarts it."""
        return {k: getattr(self, k) for k in ("swarm_mode", "host_model", "join_address", "listen", "api",
                                              "max_memory_gb", "lan_discovery")}


class Settings:
    """Preferences in `DATA_DIR/settings.ini`. A new Settings on the same file sees what an earlier
    one saved (the app restarting)."""

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / SETTINGS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._qs = QSettings(str(self.path), QSettings.Format.IniFormat)

    def configured(self) -> bool:
        """False on a first run: nothing was ever saved."""
        return bool(self._qs.allKeys())

    def load(self) -> Preferences:
        defaults = Preferences()
        values = {}
        for f in fields(Preferences):
            raw, default = self._qs.value(f.name), getattr(defaults, f.name)
            values[f.name] = default if raw is None else _convert(raw, type(default), default)
        return Preferences(**values)

    def save(self, prefs: Preferences) -> None:
        for key, value in asdict(prefs).items():
            self._qs.setValue(key, value)
        self._qs.sync()

    def update(self, **changes) -> Preferences:
        prefs = self.load().with_(**changes)
        self.save(prefs)
        return prefs

    def value(self, key: str, default=None):
        """Other small state (window geometry...), outside Preferences."""
        return self._qs.value(key, default)

    def set_value(self, key: str, value) -> None:
        self._qs.setValue(key, value)
        self._qs.sync()


def _convert(raw, kind, default):
    try:
        if kind is bool:
            if isinstance(raw, str):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            return bool(raw)
        if kind is int:
            return int(float(raw))
        if kind is float:
            return float(raw)
        if kind is str:
            if isinstance(raw, list):  # QSettings splits a string with commas into a list
                return ", ".join(str(x) for x in raw)
            return str(raw)
    except (TypeError, ValueError):
        return default
    return raw
