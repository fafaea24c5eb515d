"""cost-worker: Anthropic's authoritative cost and usage reports, synced into SQL."""

__version__ = "0.3.0"
USER_AGENT = f"cost-worker/{__version__}"

__all__ = ["USER_AGENT", "__version__"]
