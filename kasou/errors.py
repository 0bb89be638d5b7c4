"""One error hierarchy for all of kasou.

    KasouError                 every error kasou raises on purpose
    ├── UserError              the caller asked for something wrong (4xx)
    │   ├── InvalidSpec        a field failed validation (422), names the field
    │   ├── NotFound           no such VM / image (404)
    │   ├── Conflict           name taken, resource in use (409)
    │   ├── InvalidState       lifecycle transition refused (409), names both states
    │   └── CapacityError      the host cannot fit the VM (409), names what is short
    │   ├── AgentUnavailable   no guest agent answers in this VM (409)
    │   ├── Forbidden          authenticated, but the role does not allow it (403)
    │   ├── QuotaExceeded      the project's quota would be exceeded (403)
    │   ├── TooLarge           request body over the limit (413)
    │   └── RateLimited        too many requests for this token (429)
    ├── AuthError              missing, wrong, expired or revoked token (401)
    └── EngineError            QEMU / host failure (500), keeps the cause
        ├── LaunchFailure      QEMU refused to start (422): exit code, argv, stderr
        ├── QMPFailure         a QMP command failed or the monitor went away
        ├── AgentFailure       the guest agent replied with an error or broke off
        └── ImageBuildError    building a guest image failed

Front-ends (CLI, API) turn UserError into a one-line message or a JSON 4xx body and
never show a traceback for one.
"""

from __future__ import annotations

from collections.abc import Sequence


class KasouError(Exception):
    """Base of every error kasou raises on purpose."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"error": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        return out


class UserError(KasouError):
    status = 400
    code = "bad_request"


class InvalidSpec(UserError):
    status = 422
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None,
                 errors: Sequence[dict[str, str]] | None = None) -> None:
        super().__init__(message, field=field)
        self.errors = list(errors or ([{"field": field, "message": message}] if field else []))

    def to_dict(self) -> dict[str, object]:
        out = super().to_dict()
        if self.errors:
            out["errors"] = self.errors
        return out


class NotFound(UserError):
    status = 404
    code = "not_found"


class Conflict(UserError):
    status = 409
    code = "conflict"


class InvalidState(Conflict):
    code = "invalid_state"

    def __init__(self, name: str, current: str, action: str, needed: Sequence[str]) -> None:
        wanted = " or ".join(sorted(needed)) or "no state"
        super().__init__(f"cannot {action} VM {name!r}: it is {current}; {action} needs {wanted}")
        self.current = current
        self.action = action
        self.needed = list(needed)


class CapacityError(Conflict):
    code = "capacity"


class AgentUnavailable(Conflict):
    code = "agent_unavailable"


class Forbidden(UserError):
    status = 403
    code = "forbidden"


class QuotaExceeded(Forbidden):
    code = "quota_exceeded"


class TooLarge(UserError):
    status = 413
    code = "too_large"


class RateLimited(UserError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AuthError(KasouError):
    status = 401
    code = "unauthorized"


class EngineError(KasouError):
    status = 500
    code = "engine"


class LaunchFailure(EngineError):
    # QEMU refusing a definition (a file that is no kernel, a disk it cannot open) is
    # answered as unprocessable input, not as a server fault.
    status = 422
    code = "launch_failed"

    def __init__(self, message: str, *, returncode: int | None = None,
                 argv: Sequence[str] = (), output: str = "") -> None:
        detail = f"{message}: {output.strip()}" if output.strip() else message
        super().__init__(detail)
        self.returncode = returncode
        self.argv = list(argv)
        self.output = output


class QMPFailure(EngineError):
    code = "qmp"


class AgentFailure(EngineError):
    code = "guest_agent"


class ImageBuildError(EngineError):
    code = "image_build"
