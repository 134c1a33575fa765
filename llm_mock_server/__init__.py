"""An OpenAI-compatible mock LLM that enforces RPM/TPM/RPD/TPD the way OpenAI does."""
