"""Prometheus metrics for the server, named after vLLM's so existing dashboards need few edits.

vLLM's names use a `vllm:` prefix; ours use `saguaro:` with the same suffixes (Prometheus allows
colons in metric names, so the names carry over as they are). Each app gets its own
CollectorRegistry, so several apps in one process (the tests) never share counts.

Counts come from the engine thread when a request finishes (its GenerationMetrics) or is aborted;
rejections come from the event loop. prometheus-client's metrics are thread-safe.
"""

from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)

from saguaro.metrics import GenerationMetrics

PREFIX = "saguaro:"
# Seconds: from a few milliseconds (tiny models, one token) to minutes (long CPU generations).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TOKEN_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)


class ServerMetrics:
    def __init__(self, model_name: str, registry: CollectorRegistry | None = None):
        disable_created_metrics()  # no `_created` series: vLLM has none, and they double the page
        self.registry = registry if registry is not None else CollectorRegistry()
        r, labels = self.registry, ["model_name"]

        def counter(name, doc, extra=()):
            return Counter(PREFIX + name, doc, labels + list(extra), registry=r)

        self._success = counter("request_success", "Requests that finished, by finish reason.", ["finished_reason"])
        self._aborted = counter("request_aborted", "Requests aborted: the client went away or the server shut down.")
        self._failed = counter("request_failure", "Requests failed by an engine error.")
        self._rejected = counter("request_rejected", "Requests refused with 503 (queue full or shutting down).")
        self._prompt = counter("prompt_tokens", "Prompt tokens of finished requests.")
        self._generation = counter("generation_tokens", "Generated tokens (all requests, as they are produced).")
        self._drafts = counter("spec_decode_num_drafts", "Speculation rounds (SD/SSD).")
        self._draft_tokens = counter("spec_decode_num_draft_tokens", "Draft tokens proposed (SD/SSD).")
        self._accepted = counter("spec_decode_num_accepted_tokens", "Draft tokens accepted (SD/SSD).")
        self._accepted_pos = counter("spec_decode_num_accepted_tokens_per_pos",
                                     "Draft tokens accepted at each speculation position.", ["position"])
        self._drafted_pos = counter("spec_decode_num_draft_tokens_per_pos",
                                    "Draft tokens proposed at each speculation position.", ["position"])
        self._ssd_hits = counter("ssd_cache_hits", "SSD speculation-cache hits.")
        self._ssd_misses = counter("ssd_cache_misses", "SSD speculation-cache misses.")

        def gauge(name, doc):
            return Gauge(PREFIX + name, doc, labels, registry=r)

        self._running = gauge("num_requests_running", "Requests holding a KV row (prefilling or decoding).")
        self._waiting = gauge("num_requests_waiting", "Requests waiting for a KV row.")
        self._kv = gauge("kv_cache_usage_perc", "Fraction of the KV pool's rows in use (1 = full).")

        def histogram(name, doc, buckets):
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=r)

        self._ttft = histogram("time_to_first_token_seconds", "Arrival to first generated token.", LATENCY_BUCKETS)
        self._tpot = histogram("time_per_output_token_seconds",
                               "Mean time per generated token after the first, per request.", TOKEN_TIME_BUCKETS)
        self._e2e = histogram("e2e_request_latency_seconds", "Arrival to last token.", LATENCY_BUCKETS)
        self.model_name = model_name

    # Label lookups are cheap but not free; every call site names the model the same way.
    def _l(self, metric, **extra):
        return metric.labels(model_name=self.model_name, **extra)

    # ---- from the engine thread -----------------------------------------------------------------

    def tokens_generated(self, n: int) -> None:
        if n:
            self._l(self._generation).inc(n)

    def first_token(self, seconds: float) -> None:
        self._l(self._ttft).observe(seconds)

    def finished(self, reason: str, metrics: GenerationMetrics | None, e2e_s: float, decode_s: float,
                 tokens: int) -> None:
        self._l(self._success, finished_reason=reason).inc()
        self._l(self._e2e).observe(e2e_s)
        if tokens > 1:
            self._l(self._tpot).observe(decode_s / (tokens - 1))
        if metrics is None:
            return
        self._l(self._prompt).inc(metrics.prompt_tokens)
        spec = metrics.speculation
        if spec is not None and spec.rounds:
            self._l(self._drafts).inc(spec.rounds)
            self._l(self._draft_tokens).inc(spec.drafted)
            self._l(self._accepted).inc(spec.accepted)
            for pos, (acc, drafted) in enumerate(zip(spec.accepted_by_position, spec.drafted_by_position)):
                self._l(self._accepted_pos, position=str(pos)).inc(acc)
                self._l(self._drafted_pos, position=str(pos)).inc(drafted)
        hits, misses = ssd_hits_and_misses(metrics)
        if hits or misses:
            self._l(self._ssd_hits).inc(hits)
            self._l(self._ssd_misses).inc(misses)

    def aborted(self, n: int = 1) -> None:
        self._l(self._aborted).inc(n)

    def failed(self, n: int = 1) -> None:
        self._l(self._failed).inc(n)

    def load(self, running: int, waiting: int, kv_usage: float) -> None:
        self._l(self._running).set(running)
        self._l(self._waiting).set(waiting)
        self._l(self._kv).set(kv_usage)

    # ---- from the event loop ----------------------------------------------------------------------

    def rejected(self, n: int = 1) -> None:
        self._l(self._rejected).inc(n)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def ssd_hits_and_misses(metrics: GenerationMetrics) -> tuple[int, int]:
    """SSD cache lookups of one request as (hits, misses), from the engine's counts (SSDStats);
    (0, 0) for AR and SD."""
    extra = metrics.extra or {}
    hits, lookups = extra.get("hits"), extra.get("lookups")
    if not isinstance(hits, int) or not isinstance(lookups, int):
        return 0, 0
    return hits, max(0, lookups - hits)
