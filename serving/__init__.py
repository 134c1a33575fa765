"""Plumbing both services share: settings errors and docs, the batched request log."""
