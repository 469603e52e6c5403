"""The Model panel and the status line: load, unload, will-it-fit, the machine, the model picker.

Owns: mapping the panel's Gradio values to ChatService and the engine's model-admin methods.
Invariant: loading, unloading and fit estimates are admin-only, checked here on the server for
every call (the page hides the controls from members, but that is not the protection).
"""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr

from localchat.core import ChatService
from localchat.household import Household
from localchat.settings import Settings
from localchat.types import InvalidValue, LoadOptions
from localchat.ui.members import member_of

ADMINS_ONLY = "⚠ Only a household admin can load or unload models."


def choice_label(name: str, size: int | None, note: str) -> str:
    extra = [f"{size / 2**20:,.0f} MB"] if size else []
    extra += [note] if note else []
    return f"{name} ({', '.join(extra)})" if extra else name


class ModelPanel:
    def __init__(self, service: ChatService, household: Household, settings: Settings):
        self.service = service
        self.household = household
        self.settings = settings

    def _admin(self, request: gr.Request | None) -> bool:
        return self.household.may_load_models(member_of(self.household, request))

    def load_model(  # noqa: PLR0913 - one argument per control of the Model panel
        self,
        model: str,
        quantization: str,
        device: str,
        dtype: str,
        context: float | None,
        quant_type_4bit: str = "nf4",
        compute_dtype: str = "auto",
        double_quant: bool = True,
        request: gr.Request | None = None,
    ) -> Iterator[str]:
        if not self._admin(request):
            yield ADMINS_ONLY
            return
        try:
            options = LoadOptions(
                model=(model or "").strip(),
                device=device,  # type: ignore[arg-type]
                dtype=dtype,
                quantization=quantization,  # type: ignore[arg-type]
                quant_type_4bit=quant_type_4bit,
                compute_dtype=compute_dtype,
                double_quant=bool(double_quant),
                context_length=int(context) if context else None,
            ).validate()
        except InvalidValue as exc:
            yield f"⚠ {exc}"
            return
        yield f"Loading {options.model}… this can take a minute."
        try:
            info = self.service.load(options)
        except Exception as exc:  # noqa: BLE001 - one line to the user; the old model stays loaded
            current = self.service.backend.loaded()
            still = f" Still using {current.name}." if current else ""
            gr.Warning(str(exc))
            yield f"⚠ {str(exc).rstrip('.')}.{still}"
            return
        yield f"✓ Loaded in {info.load_seconds:.1f} s: {info.describe()}"

    def fit_estimate(self, model: str, device: str, context: float | None, request: gr.Request | None = None) -> str:
        """Memory per load option for the picked model, and which of them fit this machine (admins
        only: it reads the server's disk and memory)."""
        if not self._admin(request) or not (model or "").strip():
            return ""
        try:
            options = LoadOptions(
                model=model.strip(),
                device=device,  # type: ignore[arg-type]
                context_length=int(context) if context else None,
            ).validate()
        except InvalidValue as exc:
            return f"⚠ {exc}"
        return self.service.backend.fit(options)

    def hardware_text(self) -> str:
        return self.service.hardware().describe().replace("\n", "  \n")

    def unload_model(self, request: gr.Request) -> str:
        """Free the model's memory (admins only); the next load brings one back."""
        if not self._admin(request):
            return ADMINS_ONLY
        try:
            self.service.backend.unload()
        except Exception as exc:  # noqa: BLE001 - e.g. too many replies waiting
            return f"⚠ Could not unload now: {exc}"
        return "✓ Unloaded: the memory is free. Load a model to chat again."

    def status(self) -> tuple:
        """The header line (short, for a phone), the full details in the Model panel, the timer."""
        loading = self.service.loading() is not None
        return self.service.status_line(), self.service.status(), gr.Timer(active=loading)

    def after_load(self, request: gr.Request) -> tuple:
        return self.picker(request), self.service.status_line()

    def picker(self, request: gr.Request) -> gr.Dropdown:
        """The model picker's choices: where models live on this machine (their paths), for admins only."""
        return gr.Dropdown(choices=self.model_choices() if self._admin(request) else [])

    def on_load(self, request: gr.Request) -> tuple:
        """The panel as this member may see it: the page itself carries no path and no machine
        details (its config goes to everyone), an admin's page gets them here."""
        if not self._admin(request):
            return gr.Dropdown(choices=[], value=None), ""
        return gr.Dropdown(choices=self.model_choices(), value=self.settings.model), self.hardware_text()

    def model_choices(self) -> list[tuple[str, str]]:
        specs = self.service.backend.available_models()
        return [(choice_label(s.name, s.size_bytes, s.note), s.id) for s in specs]
