"""``--dtype auto`` that measures: cached per machine, injectable measurement, hardware report."""

from __future__ import annotations

import json

import pytest

from facedefense import autotune


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEDEFENSE_CACHE", str(tmp_path))
    monkeypatch.delenv("FACEDEFENSE_AUTOTUNE", raising=False)
    return tmp_path / autotune.CACHE_FILE


def test_measures_once_then_reads_the_cache(cache):
    built = []

    def probes():
        built.append(1)
        return {"float32": lambda: None, "bfloat16": lambda: None}

    with autotune.use_measurement(lambda p: {"float32": 0.2, "bfloat16": 0.1}):
        first = autotune.choose("demo", ["float32", "bfloat16"], probes, problem={"side": 8})
    assert (first.name, first.cached) == ("bfloat16", False)
    assert "bfloat16 0.1 s < float32 0.2 s" in first.reason
    # A later run measures nothing (a measurement now would pick float32).
    with autotune.use_measurement(lambda p: {"float32": 0.1, "bfloat16": 0.2}):
        second = autotune.choose("demo", ["float32", "bfloat16"], probes, problem={"side": 8})
    assert (second.name, second.cached, len(built)) == ("bfloat16", True, 1)
    entry = next(iter(json.loads(cache.read_text()).values()))
    assert entry["method"] == "demo" and entry["choice"] == "bfloat16" and entry["torch"]


def test_the_key_separates_problems_candidates_and_machines(cache, monkeypatch):
    with autotune.use_measurement(lambda p: {"a": 1.0, "b": 2.0}):
        assert autotune.choose("demo", ["a", "b"], lambda: {}, problem={"side": 8}).name == "a"
    with autotune.use_measurement(lambda p: {"a": 2.0, "b": 1.0}):
        assert autotune.choose("demo", ["a", "b"], lambda: {}, problem={"side": 16}).name == "b"
        assert autotune.choose("demo", ["b", "a"], lambda: {}, problem={"side": 8}).name == "b"
        monkeypatch.setattr(autotune, "cpu_info", lambda: {"model": "Other CPU", "flags": ["sse2"]})
        assert autotune.choose("demo", ["a", "b"], lambda: {}, problem={"side": 8}).name == "b"
    assert len(json.loads(cache.read_text())) == 4


def test_measuring_off_single_candidate_and_a_broken_cache(cache, monkeypatch):
    def boom(probes):
        raise AssertionError("must not measure")

    with autotune.use_measurement(boom):
        assert autotune.choose("demo", ["only"], lambda: {}, problem={}).reason == "only candidate"
        monkeypatch.setenv("FACEDEFENSE_AUTOTUNE", "0")
        assert autotune.choose("demo", ["guess", "other"], lambda: {}, problem={}).name == "guess"
    monkeypatch.delenv("FACEDEFENSE_AUTOTUNE")
    cache.write_text("{not json")
    with autotune.use_measurement(lambda p: {"x": 1.0, "y": 0.5}):
        assert autotune.choose("demo", ["x", "y"], lambda: {}, problem={}).name == "y"


def test_time_probes_runs_every_probe_interleaved():
    calls = []
    seconds = autotune.time_probes({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, budget_s=0.0)
    assert calls == ["a", "b"] * 3  # warm-up, then two timed rounds
    assert set(seconds) == {"a", "b"} and all(value >= 0 for value in seconds.values())


def test_time_probes_stops_timing_a_clear_loser(monkeypatch):
    from types import SimpleNamespace

    clock = [0.0]  # a probe advances this clock by its nominal time: the test does not depend on the load
    monkeypatch.setattr(autotune, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = {"fast": 0, "close": 0, "slow": 0}

    def probe(name, seconds):
        def run():
            calls[name] += 1
            clock[0] += seconds

        return run

    probes = {"fast": probe("fast", 0.004), "close": probe("close", 0.0042), "slow": probe("slow", 0.02)}
    seconds = autotune.time_probes(probes, budget_s=0.2)
    assert calls["slow"] == 3  # warm-up and the first two timed rounds only
    assert calls["fast"] > 5 and calls["close"] > 3  # the close ones keep being compared
    assert seconds["slow"] >= 0.02 and seconds["fast"] < seconds["slow"]


def test_hardware_report_lists_the_cached_choices(cache):
    with autotune.use_measurement(lambda p: {"int8": 0.1, "float32": 0.3}):
        autotune.choose("rid", ["int8", "float32"], lambda: {}, problem={"input_size": 64})
    lines = autotune.hardware_report()
    assert lines[0].startswith("cpu: ")
    assert any(line.startswith("rid [input_size=64") and ": int8 (measured: int8 0.1 s < float32 0.3 s" in line for line in lines)


def test_info_hardware_command(cache):
    from facedefense.testing.cli import invoke

    result = invoke(*["info", "--hardware"])
    assert result.exit_code == 0, result.output
    assert "autotune cache:" in result.output and str(cache.parent) in result.output
