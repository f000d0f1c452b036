"""What every listener module receives from the composition root."""

from __future__ import annotations

from dataclasses import dataclass

from core.auth import Authorizer
from core.services import Services


@dataclass(frozen=True)
class Deps:
    services: Services
    auth: Authorizer

    @property
    def channel(self) -> str:
        return self.services.settings.incident_channel or ""
