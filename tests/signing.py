"""The platform's side of command signing for tests: an Ed25519 key pair, the public key written
where a provisioned box keeps it, and signed commands addressed to one gateway."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.content.commands import Ed25519Signer, make_command


@dataclass
class Platform:
    gateway_id: str = "gw-demo"
    signer: Ed25519Signer = field(default_factory=Ed25519Signer.generate)

    def write_public_key(self, path: Path) -> Path:
        path.write_bytes(self.signer.public_pem())
        return path

    def cmd(
        self,
        kind: str,
        body: dict[str, Any],
        *,
        id: str,
        revision: int = 0,
        aud: str | None = None,
        issued_at: float | None = None,
        ttl_s: float = 600.0,
        **kw: Any,
    ) -> bytes:
        return make_command(
            kind,
            body,
            id=id,
            revision=revision,
            aud=self.gateway_id if aud is None else aud,
            signer=kw.pop("signer", self.signer),
            issued_at=time.time() if issued_at is None else issued_at,
            ttl_s=ttl_s,
            **kw,
        )
