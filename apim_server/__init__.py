"""The gateway: an OpenAI-compatible queue in front of a rate-limited upstream API."""
