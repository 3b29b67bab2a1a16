"""Operations: Prometheus metrics, health endpoints, provenance records and QA previews."""
