"""Secret values that cannot leak through repr, str, f-strings or logs."""

from __future__ import annotations

import hashlib
import re
from typing import NoReturn

ADMIN_KEY_PREFIX = "sk-ant-admin"
CONSOLE_HINT = "create one in the Anthropic Console under Settings > Admin API Keys (organization admins only)"


#: The one rule for what an Anthropic key looks like, used both to accept an AdminKey and to mask keys in any
#: text (logs, error messages): a public head (`sk-ant-`, a lowercase kind, an optional `NN-` version) and
#: a secret body that starts with a key character and runs on through every non-whitespace character.
#: AdminKey accepts a value only if this rule matches all of it, so masking the body of each match hides
#: every key the type accepts, whatever characters it holds. The head is possessive (no backtracking into
#: it), so text whose body would start with anything else is left as written: the key hint
#: `sk-ant-admin01-...x7Qa` and prose such as `(sk-ant-admin...)`.
KEY_SHAPE = re.compile(r"(sk-ant-[a-z]*+(?:[0-9]++-)?+)([A-Za-z0-9_\-]\S*)")


def mask_keys(text: str) -> str:
    """`text` with the secret body of everything shaped like an Anthropic key replaced by `***`."""
    return KEY_SHAPE.sub(lambda m: m.group(1) + "***", text)


class InvalidAdminKey(ValueError):
    """The supplied key is not an Admin API key; the message is safe to show (it never echoes the key)."""


class AdminKey:
    """An Anthropic Admin API key. `reveal()` is the only way to the plaintext."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        value = value.strip()
        if not value:
            raise InvalidAdminKey(f"no Admin API key given: an Admin key (sk-ant-admin...) is needed; {CONSOLE_HINT}")
        if value.startswith("sk-ant-api"):
            raise InvalidAdminKey(
                "this is a regular API key (sk-ant-api...), not an Admin key: the cost and usage reports need "
                f"an Admin key (sk-ant-admin...); {CONSOLE_HINT}"
            )
        if not value.startswith(ADMIN_KEY_PREFIX):
            raise InvalidAdminKey(f"not an Admin API key: an Admin key (sk-ant-admin...) is needed; {CONSOLE_HINT}")
        if any(c.isspace() or not c.isprintable() for c in value):
            raise InvalidAdminKey("the Admin API key contains whitespace or control characters: paste it again")
        if not KEY_SHAPE.fullmatch(value):
            # A value the masking rule would not cover whole could leak into a log: refuse it.
            raise InvalidAdminKey(
                "this is not a whole Admin API key (sk-ant-admin01-... then the secret part; a key hint such as "
                f"sk-ant-admin01-...x7Qa is not the key): paste the full key; {CONSOLE_HINT}")
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def hint(self) -> str:
        """A display form that identifies the key without exposing it: `sk-ant-admin01-...x7Qa`."""
        head = self._value[: len(ADMIN_KEY_PREFIX) + 3] if self._value.startswith("sk-ant-admin01-") else ADMIN_KEY_PREFIX
        return f"{head}...{self._value[-4:]}"

    @property
    def fingerprint(self) -> str:
        """A stable, non-reversible id for the key (used to name a rate-limit bucket before the org is known)."""
        return hashlib.sha256(b"cost-worker:admin-key:" + self._value.encode()).hexdigest()[:24]

    def __repr__(self) -> str:
        return f"AdminKey({self.hint!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AdminKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self) -> NoReturn:  # never pickle a plaintext key
        raise TypeError("AdminKey cannot be pickled")
