"""The attack suite runs against real gateways and a real Redis, like the integration
tests: their fixtures are shared, not copied."""

from __future__ import annotations

from tests.integration.conftest import gateway, gateway_factory

__all__ = ["gateway", "gateway_factory"]
