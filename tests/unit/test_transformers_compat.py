"""The one place that knows transformers' internals (llava_avc.backends.transformers_compat): its errors
on a broken contract, the guard of the entry points, the custom_generate contract, the cache names; and
that the tested versions it states agree with the pins, the package metadata and the README."""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path

import pytest
import torch
import transformers

from llava_avc.backends import transformers_compat as compat
from llava_avc.backends import versions

ROOT = Path(__file__).resolve().parents[2]
NEWER = "5.99.0"


@pytest.fixture
def newer_release(monkeypatch):
    """llava-avc takes the installed transformers for a release newer than the newest tested one."""
    monkeypatch.setattr(compat, "INSTALLED", NEWER)


@pytest.fixture
def tested_release(monkeypatch):
    monkeypatch.setattr(compat, "INSTALLED", versions.NEWEST_TESTED)


def test_a_broken_contract_on_a_newer_release_is_one_line_with_both_versions_and_the_fix(newer_release):
    error = compat.contract_broken("generate passed something new")
    assert isinstance(error, compat.UntestedTransformersError)
    assert str(error) == (f"transformers {NEWER} is newer than llava-avc was tested with (up to "
                          f"{versions.NEWEST_TESTED}): generate passed something new; install the newest tested "
                          f"release: pip install 'transformers<={versions.NEWEST_TESTED}'")


def test_a_broken_contract_on_a_tested_release_is_a_bug_to_report(tested_release):
    error = compat.contract_broken("generate passed something new")
    assert type(error) is RuntimeError and "bug of llava-avc: please report it" in str(error)


def _raise_inside_transformers(exc_type):
    """Raise from code whose file lies inside the installed transformers package (as its own code would)."""
    fake = os.path.join(os.path.dirname(transformers.__file__), "generation", "future_release.py")
    exec(compile(f"raise {exc_type}('changed')", fake, "exec"))


def test_the_guard_translates_a_keyerror_or_an_error_inside_transformers_on_a_newer_release(newer_release):
    with pytest.raises(compat.UntestedTransformersError, match=r"failed inside transformers with KeyError: 'gone'"):
        with compat.untested_guard():
            {}["gone"]
    with pytest.raises(compat.UntestedTransformersError, match=r"ValueError: changed; install the newest tested"):
        with compat.untested_guard():
            _raise_inside_transformers("ValueError")


def test_the_guard_leaves_our_own_user_errors_and_every_error_on_a_tested_release_alone(newer_release, monkeypatch):
    with pytest.raises(ValueError, match="num_beams"):  # a user's mistake, raised by llava-avc: not translated
        with compat.untested_guard():
            raise ValueError("`num_beams` (=2) must be 1")
    monkeypatch.setattr(compat, "INSTALLED", versions.NEWEST_TESTED)
    with pytest.raises(KeyError):  # on a tested release an error is a bug: its own traceback
        with compat.untested_guard():
            {}["gone"]
    with pytest.raises(ValueError, match="^changed$"):
        with compat.untested_guard():
            _raise_inside_transformers("ValueError")


def test_the_custom_generate_contract_drops_the_loop_state_under_every_cache_name(tested_release):
    mask = torch.ones(1, 3)
    for cache_name in ("cache", "past_key_values"):
        kwargs = {"attention_mask": mask, cache_name: object(), "use_cache": True, "logits_to_keep": 1,
                  "position_ids": torch.arange(3)[None], "cache_position": torch.arange(3)}
        assert compat.decoding_kwargs(kwargs) == (mask, None)
    encoder = {"image": object()}
    assert compat.decoding_kwargs({"mm_encoder_outputs": encoder}) == (None, encoder)


def test_an_unknown_model_kwarg_from_generate_is_named(newer_release):
    with pytest.raises(compat.UntestedTransformersError, match=r"model_kwargs that llava-avc does not know: "
                                                               r"\['kv_store'\]"):
        compat.decoding_kwargs({"attention_mask": None, "kv_store": object()})


class _NewForward(torch.nn.Module):
    def forward(self, inputs_embeds, cache=None, use_cache=False):
        return inputs_embeds


class _OldForward(torch.nn.Module):
    def forward(self, inputs_embeds, past_key_values=None, use_cache=False):
        return inputs_embeds


class _NoCache(torch.nn.Module):
    def forward(self, inputs_embeds, kv=None):
        return inputs_embeds


def test_the_cache_argument_follows_the_forward_signature(newer_release):
    assert compat.cache_argument(_NewForward()) == "cache"
    assert compat.cache_argument(_OldForward()) == "past_key_values"
    with pytest.raises(compat.UntestedTransformersError, match="_NoCache.forward takes no KV cache argument"):
        compat.cache_argument(_NoCache())


def test_the_cache_is_found_under_either_name_in_outputs_and_hook_kwargs(newer_release):
    cache = compat.new_cache()
    assert compat.output_cache({"cache": cache}) is cache
    assert compat.output_cache({"past_key_values": cache}) is cache
    with pytest.raises(compat.UntestedTransformersError, match="holds no KV cache"):
        compat.output_cache({"last_hidden_state": None})
    for name in compat.CACHE_NAMES:
        assert compat.hook_cache({name: cache, "hidden_states": None}) is cache
    assert compat.hook_cache({"hidden_states": None}) is None


def test_a_cache_built_from_layers_gives_them_back():
    keys, values = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    cache = compat.cache_from_layers([(keys, values), (keys + 1, values + 1)])
    (k0, v0), (k1, v1) = compat.cache_layers(cache)
    assert torch.equal(k0, keys) and torch.equal(v1, values + 1) and torch.equal(compat.layer_keys(cache, 1), keys + 1)


# ----------------------------------------------------------------- the stated versions agree everywhere


def _pinned(profile: str, package: str) -> str:
    text = (ROOT / "requirements" / f"pins-{profile}.txt").read_text()
    return re.search(rf"^{package}==(\S+)$", text, re.M).group(1)


def test_the_tested_releases_are_the_pinned_profiles():
    assert versions.TESTED_TRANSFORMERS == tuple(_pinned(profile, "transformers") for profile in ("4.37", "4.57", "hf"))
    assert versions.NEWEST_TESTED == _pinned("hf", "transformers")


def test_the_package_metadata_states_the_supported_ranges():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    extras = config["options.extras_require"]
    hf = re.search(r"transformers(\S+)", extras["hf"]).group(1)
    assert hf == f">={versions.dotted(versions.HF_OLDEST[:2])},<{versions.version_tuple(versions.NEWEST_TESTED)[0] + 1}"
    from llava_avc.backends.llava.versions import MAX_TRANSFORMERS_EXCLUSIVE

    assert re.search(r"transformers(\S+)", extras["llava"]).group(1) == (
        f">=4.37.2,<{versions.dotted(MAX_TRANSFORMERS_EXCLUSIVE[:2])}")


def test_the_readme_names_every_tested_release_and_the_supported_ranges():
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| llava-hf"))
    assert f"{versions.dotted(versions.HF_OLDEST[:2])} - 5.x" in row
    assert all(version in row for version in ("4.57.6", versions.NEWEST_TESTED))
    assert f"transformers<={versions.NEWEST_TESTED}" in readme or f"transformers<={versions.NEWEST_TESTED}" in (
        ROOT / "docs" / "transformers.md").read_text()
