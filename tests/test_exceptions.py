"""The error classes of ``cra_agents._exceptions``: bases, codes, context and pickling."""

from __future__ import annotations

import pickle

import pytest

import cra_agents as cra


class TestConfigurationError:
    def test_bases_and_code(self):
        """A ConfigurationError is a CRAError and a ValueError with a stable code."""
        error = cra.ConfigurationError("bad store", details={"reason": "unknown_store_scheme"})
        assert isinstance(error, cra.CRAError)
        assert isinstance(error, ValueError)
        assert error.code == "CONFIGURATION_ERROR"
        assert error.to_error_response()["error"] == {
            "code": "CONFIGURATION_ERROR",
            "message": "bad store",
            "category": "internal",
            "recoverable": False,
            "details": {"reason": "unknown_store_scheme"},
        }

    def test_caught_as_value_error(self):
        """Code that caught the ValueError a bad store URL raised before still catches it."""
        with pytest.raises(ValueError, match="unknown store scheme"):
            cra.open_store("ftp://x")

    def test_pickle(self):
        """Pickling keeps the class, message and details."""
        error = cra.ConfigurationError("bad", details={"reason": "r"})
        clone = pickle.loads(pickle.dumps(error))
        assert type(clone) is cra.ConfigurationError
        assert (str(clone), clone.details) == ("bad", {"reason": "r"})


class TestMissingDependencyError:
    def test_install_hint(self):
        """The message names the package and ends with the pip command of the extra."""
        error = cra.MissingDependencyError(
            "exporting spans", package="opentelemetry-sdk", extra="otel"
        )
        assert str(error) == (
            "exporting spans needs opentelemetry-sdk: pip install 'cra-agents[otel]'"
        )
        assert (error.package, error.extra) == ("opentelemetry-sdk", "otel")
        assert error.install_hint == "pip install 'cra-agents[otel]'"
        assert error.code == "MISSING_DEPENDENCY"
        assert error.details == {"package": "opentelemetry-sdk", "extra": "otel"}

    def test_caught_as_import_error(self):
        """``except ImportError`` around an optional feature catches it, with its cause."""

        def read_yaml() -> None:
            try:
                import cra_agents_no_such_module  # type: ignore[import-not-found]  # noqa: F401
            except ImportError as exc:
                raise cra.MissingDependencyError(
                    "reading YAML atlases", package="pyyaml", extra="yaml"
                ) from exc

        with pytest.raises(ImportError) as caught:
            read_yaml()
        assert isinstance(caught.value, cra.CRAError)
        assert isinstance(caught.value.__cause__, ModuleNotFoundError)

    def test_pickle(self):
        """Pickling keeps package, extra and the hint."""
        error = cra.MissingDependencyError("x", package="p", extra="e", details={"more": 1})
        clone = pickle.loads(pickle.dumps(error))
        assert type(clone) is cra.MissingDependencyError
        assert (clone.package, clone.extra, clone.install_hint) == ("p", "e", error.install_hint)
        assert clone.details == {"package": "p", "extra": "e", "more": 1}
        assert str(clone) == str(error)


class TestHttpModeErrors:
    """The errors of HTTP mode: status, category and code as the server maps them."""

    def test_status_category_and_code(self):
        from cra_agents import (
            AuthenticationError,
            CRAError,
            ForbiddenError,
            ServiceUnavailableError,
            TooManyRequestsError,
        )

        cases = [
            (AuthenticationError("no key"), 401, "authorization", "UNAUTHORIZED", False),
            (ForbiddenError("read only"), 403, "authorization", "FORBIDDEN", False),
            (
                TooManyRequestsError("slow down", retry_after=1.5),
                429,
                "rate_limit",
                "TOO_MANY_REQUESTS",
                True,
            ),
            (ServiceUnavailableError("down"), 503, "external", "SERVICE_UNAVAILABLE", True),
        ]
        for error, status, category, code, recoverable in cases:
            assert isinstance(error, CRAError)
            assert (error.status, error.category, error.code) == (status, category, code)
            assert error.recoverable is recoverable
            body = error.to_error_response("req-1")["error"]
            assert body["code"] == code and body["request_id"] == "req-1"
        assert isinstance(ForbiddenError("x"), PermissionError)
        limited = TooManyRequestsError("slow down", retry_after=1.5)
        assert limited.retry_after == 1.5 and limited.details == {"retry_after": 1.5}
        again = pickle.loads(pickle.dumps(limited))
        assert again.retry_after == 1.5 and again.code == "TOO_MANY_REQUESTS"


def test_refusal_text_names_action_policy_and_reason() -> None:
    """One text for every adapter: what to fix, or not to retry."""
    from cra_agents.runtime import refusal_text

    denied = cra.ActionDeniedError(
        "denied", action_id="github.repo.delete", policy_id="deny-repo-delete", reason="never"
    )
    assert refusal_text(denied) == (
        "Denied: github.repo.delete is not permitted (policy deny-repo-delete: never). "
        "Do not retry it; choose another way or ask the user."
    )
    invalid = cra.InvalidParametersError("bad repo", details={"action_id": "github.issue.list"})
    assert refusal_text(invalid).startswith("Refused: the arguments for github.issue.list")
    unknown = cra.ActionNotFoundError("no action", details={"tool": "rm_rf"})
    assert refusal_text(unknown).startswith("Denied: rm_rf is not an action any loaded atlas")
    other = cra.TraceUnavailableError("the store is down")
    assert refusal_text(other) == "Refused by cra-agents (TRACE_UNAVAILABLE): the store is down"
