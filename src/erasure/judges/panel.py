"""The judges of one run: which judge reads each concept kind (params.evaluate.judges), each built once
and shared (the copy judge embeds with the clip judge's CLIP when no SSCD file is given), and the CLIP
that the quality metrics (FID, KID, CLIP score) of models other than the miniworld read.
"""

from __future__ import annotations

import threading

from ..config import PipelineParams
from .base import Judge
from .registry import build


class Panel:
    def __init__(self, params: PipelineParams):
        self.params = params
        self._built: dict[str, Judge] = {}
        self._lock = threading.RLock()  # the flow's parallel tasks share a panel: each judge loads once

    def name_for(self, kind: str) -> str:
        return self.params.judge_for(kind)

    def judge(self, kind: str) -> Judge:
        return self.get(self.name_for(kind))

    def clip(self) -> Judge:
        return self.get("clip")

    def check(self, kinds: list[str], quality: bool) -> None:
        """Build every judge these kinds need (and the quality CLIP): a judge model that cannot be had
        fails here, before any image is drawn."""
        for kind in dict.fromkeys(kinds):
            self.judge(kind)
        if quality:
            self.clip()

    def get(self, name: str) -> Judge:
        with self._lock:
            return self._get(name)

    def _get(self, name: str) -> Judge:
        if name not in self._built:
            ev = self.params.evaluate
            from ..device import resolve_device

            device = str(resolve_device(self.params.device))  # NudeNet's ONNX runtime stays on the CPU
            if name == "clip":
                judge = build("clip", model=ev.clip.model, device=device)
            elif name == "nudenet":
                judge = build("nudenet", classes=list(ev.nudenet.classes), threshold=ev.nudenet.threshold)
            elif name == "copy":
                sscd = str(ev.copy.sscd) if ev.copy.sscd is not None else None
                # With SSCD the CLIP is built only if a probe without a reference (a neighbour) needs it.
                judge = build("copy", sscd=sscd, threshold=ev.copy.threshold, device=device,
                              clip=(lambda: self.get("clip")) if sscd else self.get("clip"))
            else:
                judge = build(name)
            self._built[name] = judge
        return self._built[name]
