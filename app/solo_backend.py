"""Solo mode: the chat answers from a whole GGUF model file on this computer (llama.cpp), no swarm.

`SoloChatBackend` implements the chat backend seam (app/chat_backend.py) over
engine/backends/llama_cpp_solo.py. Nothing here blocks the UI thread: `stream()` only builds a
`SoloChatStream`; the model file is loaded by the first iteration (on the turn's worker thread),
or earlier by `warm_up()` on a worker thread, and is kept for later turns. A loaded llama.cpp model
answers one request at a time, so a lock serialises loading and turns; Stop sets a flag that the
iterating thread checks after every token, and closing the token generator makes llama.cpp
compute nothing more.

Importing this module imports neither llama_cpp nor torch: llama_cpp is imported when a model is
actually loaded (llama_cpp_solo does it lazily).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from app.chat_backend import ChatError, ChatOptions, TurnStats, with_system_prompt

log = logging.getLogger(__name__)

N_CTX = 4096  # tokens of context (capped by the model's own length): its KV cache is allocated at load
SETTINGS_HINT = "Choose another model file under Settings → Solo mode, or turn solo mode off to chat with the swarm."


def solo_model_problem(path: str | Path | None) -> str | None:
    """Why this path cannot be used for solo mode, in plain words (None: it looks like a GGUF file).
    Cheap (reads four bytes): fit for the Settings dialog on the UI thread."""
    from engine.backends.llama_cpp_solo import SoloModeError, check_gguf_file

    if not path or not str(path).strip():
        return "Choose a model file (.gguf) for solo mode, or turn solo mode off."
    try:
        check_gguf_file(Path(str(path).strip()).expanduser())
    except SoloModeError as exc:
        return str(exc)
    return None


def _load(path: Path, n_ctx: int):
    from engine.backends.llama_cpp_solo import load_gguf

    return load_gguf(path, n_ctx=n_ctx)


class SoloChatBackend:
    """Chat with the GGUF model at `path`. `loader(path, n_ctx)` returns a llama_cpp.Llama
    (tests may pass a smaller context or their own loader)."""

    def __init__(self, path: str | Path, *, n_ctx: int = N_CTX, loader: Callable | None = None):
        self.path = Path(str(path).strip()).expanduser()
        self.name = f"solo: {self.path.name}"
        self.n_ctx = n_ctx
        self._loader = loader or _load
        self._lock = threading.Lock()  # one load or one turn at a time on this model
        self._llm = None
        self.load_s: float | None = None  # how long loading took, once loaded
        self._closed = False

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def stream(self, messages: list[dict], options: ChatOptions) -> "SoloChatStream":
        return SoloChatStream(self, with_system_prompt(messages, options.system_prompt), options)

    def warm_up(self) -> None:
        """Load the model now (call it on a worker thread), so the first answer starts sooner.
        A failure is only logged: the next turn tries again and shows the problem inline."""
        try:
            with self._lock:
                self._model()
        except ChatError as exc:
            log.warning("solo mode: %s", exc)

    def close(self) -> None:
        """Free the model (call it on a worker thread: it waits for a running turn to end)."""
        with self._lock:
            self._closed = True
            llm, self._llm = self._llm, None
        if llm is not None and hasattr(llm, "close"):
            llm.close()

    # ---- with the lock held, on a worker thread ----

    def _model(self):
        if self._closed:
            raise ChatError("Solo mode was turned off or switched to another model file.", "Send your message again.")
        if self._llm is None:
            from engine.backends.llama_cpp_solo import SoloModeError

            started = time.perf_counter()
            log.info("solo mode: loading %s", self.path)
            try:
                self._llm = self._loader(self.path, self.n_ctx)
            except SoloModeError as exc:
                raise ChatError(str(exc).rstrip(".") + ".", SETTINGS_HINT) from None
            except (MemoryError, OverflowError):  # a damaged header asks for absurd sizes; or a huge model
                raise ChatError(f"Solo mode could not load {self.path.name}: the file looks damaged, or the model "
                                "is too big for this computer's memory.", SETTINGS_HINT) from None
            self.load_s = time.perf_counter() - started
            log.info("solo mode: %s loaded in %.1f s", self.path.name, self.load_s)
        return self._llm


class SoloChatStream:
    """One turn: iterate on a worker thread; `cancel()` from any thread."""

    def __init__(self, backend: SoloChatBackend, messages: list[dict], options: ChatOptions):
        self._backend, self._messages, self._options = backend, messages, options
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[str | TurnStats]:
        from engine.backends.llama_cpp_solo import SoloModeError, stream_chat

        o = self._options
        with self._backend._lock:
            if self.cancelled:
                return
            llm = self._backend._model()
            if self.cancelled:
                return
            started = time.perf_counter()
            try:
                pieces = stream_chat(llm, self._messages, max_tokens=o.max_tokens, temperature=o.temperature,
                                     top_p=o.top_p, seed=o.seed)
            except SoloModeError as exc:  # the conversation does not fit the model's context
                raise ChatError(str(exc).rstrip(".") + ".", "Start a New chat.") from None
            except ValueError as exc:  # sampling settings llama.cpp refuses
                raise ChatError(f"The answer settings are out of range ({exc}).",
                                "Change them under Options.") from None
            count, first_at = 0, None
            try:
                for piece in pieces:
                    if self.cancelled:
                        return
                    count += 1
                    first_at = first_at or time.perf_counter()
                    yield piece
            except RuntimeError as exc:  # llama.cpp failed in the middle of the answer
                log.exception("solo mode: llama.cpp failed")
                raise ChatError(f"llama.cpp failed while answering ({exc}).",
                                "Start a New chat; if it keeps happening, choose another model file under "
                                "Settings → Solo mode.") from None
            finally:
                pieces.close()  # stopped or done: llama.cpp decodes nothing more
            ended = time.perf_counter()
        if self.cancelled:
            return
        decode_s = ended - first_at if first_at else 0.0
        # count: the text pieces, one per token except that a character split over tokens arrives
        # once, complete; so a count below max_tokens does not prove the answer ended by itself.
        yield TurnStats(routes=[], ttft_s=(first_at - started) if first_at else None,
                        tokens_per_s=(count - 1) / decode_s if count > 1 and decode_s > 0 else None,
                        completion_tokens=count, finish_reason="length" if count >= o.max_tokens else None)


def failure_offers(prefs) -> list[tuple[str, str]]:
    """What a failed chat turn offers under its problem, as (action, words) links (see
    app/conversation.py): in solo mode, Settings; with the swarm, switching to solo mode when a
    usable model file is chosen, else a pointer to Settings to choose one."""
    if prefs.uses_solo:
        return [("settings", "Open Settings (Solo mode)")]
    if prefs.solo_model.strip() and solo_model_problem(prefs.solo_model) is None:
        name = Path(prefs.solo_model.strip()).expanduser().name
        return [("solo", f"Chat with {name} on this computer instead (solo mode)")]
    return [("settings", "Chat without the swarm: choose a model file for solo mode in Settings")]
