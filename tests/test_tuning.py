"""Configuration choice and its cache, with a fake timer (the choice itself needs no GPU)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from gpuprof.ops.tuning import TuningCache, choose, fastest, tuning_enabled


@dataclass(frozen=True)
class Cfg:
    size: int


TIMES = {Cfg(1): 5.0, Cfg(2): 3.0, Cfg(3): 3.0, Cfg(4): 9.0}


def fake_timer(log):
    def timer(fn):
        return fn()

    def run(config):
        log.append(config)
        if config.size == 99:
            raise RuntimeError("out of shared memory")
        return TIMES[config]

    return timer, run


def test_fastest_takes_the_earliest_of_equals_and_skips_failures():
    log = []
    timer, run = fake_timer(log)
    assert fastest([Cfg(99), Cfg(1), Cfg(3), Cfg(2)], run, timer) == (Cfg(3), 3.0)
    with pytest.raises(RuntimeError, match="no candidate"):
        fastest([Cfg(99)], run, timer)


def test_choose_times_once_then_remembers(tmp_path):
    log = []
    timer, run = fake_timer(log)
    cache = TuningCache(tmp_path / "t.json")
    args = dict(cache=cache, timer=timer, enabled=True)
    assert choose("k", list(TIMES), run, "cuda", **args) == Cfg(2)
    assert len(log) == 4
    assert choose("k", list(TIMES), run, "cuda", **args) == Cfg(2)
    assert len(log) == 4  # no second timing
    reloaded = TuningCache(tmp_path / "t.json")
    assert reloaded.get("k") == {"size": 2}
    assert choose("k", list(TIMES), run, "cuda", cache=reloaded, timer=timer, enabled=True) == Cfg(2)
    assert len(log) == 4


def test_choose_uses_the_default_when_tuning_is_off():
    log = []
    timer, run = fake_timer(log)
    assert choose("k", list(TIMES), run, "cuda", cache=TuningCache(None), timer=timer, enabled=False) == Cfg(1)
    assert log == []


def test_cache_of_other_versions_is_ignored(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"versions": {"triton": "0.0"}, "entries": {"k": {"config": {"size": 4}}}}))
    assert TuningCache(path).get("k") is None
    path.write_text("not json")
    assert TuningCache(path).get("k") is None


def test_stale_config_layout_is_tuned_again(tmp_path):
    log = []
    timer, run = fake_timer(log)
    cache = TuningCache(None)
    cache.put("k", {"old_field": 1}, 1.0, 4)
    assert choose("k", list(TIMES), run, "cuda", cache=cache, timer=timer, enabled=True) == Cfg(2)


def test_no_tuning_on_the_cpu():
    assert not tuning_enabled("cpu")
