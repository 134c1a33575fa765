"""Live terminal dashboard of the mock LLM and the gateway (``apim-monitor``)."""
