# One image for all three commands: llm-mock, apim, apim-monitor.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ratelimit ./ratelimit
COPY openai_wire ./openai_wire
COPY serving ./serving
COPY llm_mock_server ./llm_mock_server
COPY apim_server ./apim_server
COPY monitor ./monitor
# Optional extras, e.g. `--build-arg EXTRAS=otel` for APIM_OTEL_TRACES.
ARG EXTRAS=""
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
    && useradd --create-home --uid 10001 app

USER app
EXPOSE 8000 8001
CMD ["llm-mock"]
