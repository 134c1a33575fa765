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
RUN pip install . \
    && useradd --create-home --uid 10001 app

USER app
EXPOSE 8000 8001
CMD ["llm-mock"]
