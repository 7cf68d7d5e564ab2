"""What should run: the doctor's manifest (``config/manifest.toml``).

Validated once, at load, like the bot config (frozen models, unknown fields refused, an
error names the file and the field). Accounts not listed must not run at all.
"""

from __future__ import annotations

import os
from collections import Counter

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from guardrails.config import ConfigError, DurationMs, format_validation_error, read_toml
from guardrails.keys import AccountId, InvalidAccountId

DEFAULT_STALE_AFTER_MS = 10_000


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class ManifestAccount(_Model):
    account: str = Field(description="venue:account, as in the bot config's [account].")
    instances: int = Field(ge=0, description="Copies that should run in total (active + standbys).")
    hosts: list[str] = Field(
        default_factory=list, description="Hosts the copies run on; empty = any host."
    )
    max_per_host: int = Field(
        default=1, ge=1, description="Copies allowed per host; more need the --standby flag."
    )

    @field_validator("account")
    @classmethod
    def _account(cls, v: str) -> str:
        try:
            return str(AccountId.parse(v))
        except InvalidAccountId as e:
            raise ValueError(str(e)) from None

    @property
    def account_id(self) -> AccountId:
        return AccountId.parse(self.account)


class Manifest(_Model):
    """What should run. Accounts not listed here must not run at all."""

    stale_after: DurationMs | None = Field(
        default=None, description="A registry row silent for longer than this is stale (10s)."
    )

    @property
    def stale_after_ms(self) -> int:
        return self.stale_after if self.stale_after is not None else DEFAULT_STALE_AFTER_MS
    accounts: list[ManifestAccount] = Field(default_factory=list, description="Each account.")
    allow_non_durable: bool = Field(
        default=False,
        description="Accept a Redis without AOF (its restart loses the fencing counter): "
        "reported as info instead of a problem. Throwaway setups only.",
    )

    @field_validator("accounts")
    @classmethod
    def _unique(cls, v: list[ManifestAccount]) -> list[ManifestAccount]:
        seen = Counter(a.account for a in v)
        dupes = sorted(a for a, n in seen.items() if n > 1)
        if dupes:
            raise ValueError(f"accounts listed twice: {', '.join(dupes)}")
        return v


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Load and validate the manifest at ``path`` (``ConfigError`` names file and field)."""
    data = read_toml(path, "manifest")
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(str(path), e)) from None
