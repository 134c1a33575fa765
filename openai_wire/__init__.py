"""The OpenAI wire format both services speak: schemas, error bodies, headers, SSE."""
