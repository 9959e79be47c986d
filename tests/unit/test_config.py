"""Unit tests of llava_avc.algorithm.config (defaults, validation messages, no-op warnings) and of the method
keywords' resolution (llava_avc.decode.methods.resolve_method)."""

import dataclasses
import json
import math
import re
import warnings

import pytest

from llava_avc.algorithm.config import MASKING_SCHEMES, AVCConfig, M3IDConfig, VCDConfig
from llava_avc.decode.methods import resolve_method

ALL_CONFIGS = (AVCConfig, VCDConfig, M3IDConfig)


def test_defaults_match_the_paper_and_the_baselines():
    assert AVCConfig() == AVCConfig(alpha=2.5, beta=0.1, gamma=0.5, lam=1.0, masking="zeros",
                                    noise_seed=0)
    assert VCDConfig() == VCDConfig(alpha=1.0, beta=0.1, noise_step=500, noise_seed=0)
    assert M3IDConfig() == M3IDConfig(lam=0.02, beta=0.1)
    assert MASKING_SCHEMES == ("zeros", "ones", "noise")


def test_method_names():
    assert AVCConfig.method == "avc" and AVCConfig().method == "avc"
    assert VCDConfig.method == "vcd" and VCDConfig().method == "vcd"
    assert M3IDConfig.method == "m3id" and M3IDConfig().method == "m3id"


def test_to_dict_is_json_able_and_names_the_method():
    assert AVCConfig().to_dict() == {"method": "avc", "alpha": 2.5, "beta": 0.1, "gamma": 0.5,
                                     "lam": 1.0, "masking": "zeros", "noise_seed": 0}
    assert VCDConfig().to_dict() == {"method": "vcd", "alpha": 1.0, "beta": 0.1,
                                     "noise_step": 500, "noise_seed": 0}
    assert M3IDConfig().to_dict() == {"method": "m3id", "lam": 0.02, "beta": 0.1}
    for cls in ALL_CONFIGS:
        assert json.loads(json.dumps(cls().to_dict())) == cls().to_dict()


def test_int_hyper_parameters_are_stored_as_floats():
    cfg = AVCConfig(alpha=1, beta=1, gamma=1, lam=0)
    assert all(type(v) is float for v in (cfg.alpha, cfg.beta, cfg.gamma, cfg.lam))
    assert type(M3IDConfig(lam=1).lam) is float


def test_every_field_has_help_metadata():
    for cls in ALL_CONFIGS:
        for f in dataclasses.fields(cls):
            assert isinstance(f.metadata.get("help"), str) and f.metadata["help"], f.name


def test_configs_are_frozen():
    cfg = AVCConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.alpha = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        VCDConfig().noise_step = 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        M3IDConfig().lam = 0.1


def test_default_configs_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cls in ALL_CONFIGS:
            cls()


@pytest.mark.parametrize("cls", ALL_CONFIGS)
@pytest.mark.parametrize("beta", [0, 0.0, -0.1, 1.5, 1.0000001])
def test_beta_outside_zero_one_is_rejected_with_the_fix(cls, beta):
    with pytest.raises(ValueError, match=rf"`beta` \(={beta!r}\) must be in \(0, 1\].*beta=0\.1"):
        cls(beta=beta)


@pytest.mark.parametrize("cls", ALL_CONFIGS)
def test_beta_of_one_is_allowed(cls):
    assert cls(beta=1.0).beta == 1.0


@pytest.mark.parametrize("gamma", [0.0, -0.5, 1.5])
def test_gamma_outside_zero_one_is_rejected(gamma):
    with pytest.raises(ValueError, match=rf"`gamma` \(={gamma!r}\) must be in \(0, 1\]"):
        AVCConfig(gamma=gamma)


def test_gamma_of_one_is_allowed():
    assert AVCConfig(gamma=1.0).gamma == 1.0


@pytest.mark.parametrize("cls", [AVCConfig, VCDConfig])
def test_negative_alpha_is_rejected(cls):
    with pytest.raises(ValueError, match=r"`alpha` \(=-1\.0\) must be >= 0"):
        cls(alpha=-1.0)


@pytest.mark.parametrize("cls", [AVCConfig, M3IDConfig])
def test_negative_lam_is_rejected(cls):
    with pytest.raises(ValueError, match=r"`lam` \(=-0\.5\) must be >= 0"):
        cls(lam=-0.5)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", ["alpha", "beta", "gamma", "lam"])
def test_non_finite_numbers_are_rejected(name, value):
    with pytest.raises(ValueError, match=rf"`{name}` \(={value!r}\) must be a finite"):
        AVCConfig(**{name: value})


@pytest.mark.parametrize("value", [True, False, "2.5", None, [1.0]])
@pytest.mark.parametrize("name", ["alpha", "beta", "gamma", "lam"])
def test_non_numbers_and_bools_are_type_errors(name, value):
    expected = re.escape(f"`{name}` (={value!r}) must be a real number")
    with pytest.raises(TypeError, match=expected):
        AVCConfig(**{name: value})


def test_bool_is_not_a_number_for_m3id_and_vcd():
    with pytest.raises(TypeError, match=r"`lam` \(=True\)"):
        M3IDConfig(lam=True)
    with pytest.raises(TypeError, match=r"`alpha` \(=False\)"):
        VCDConfig(alpha=False)


def test_unknown_masking_scheme_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"`masking` \(='blur'\) must be one of .*'zeros'.*'ones'"
                                         r".*'noise'"):
        AVCConfig(masking="blur")


def test_masking_names_are_exact():
    with pytest.raises(ValueError, match=r"`masking` \(='Zeros'\)"):
        AVCConfig(masking="Zeros")


def test_non_string_masking_is_a_type_error():
    with pytest.raises(TypeError, match=r"`masking` \(=0\) must be a str"):
        AVCConfig(masking=0)


@pytest.mark.parametrize("scheme", MASKING_SCHEMES)
def test_every_masking_scheme_is_accepted(scheme):
    assert AVCConfig(masking=scheme).masking == scheme


@pytest.mark.parametrize("cls", [AVCConfig, VCDConfig])
@pytest.mark.parametrize("seed", [1.0, True, "0"])
def test_non_int_noise_seed_is_a_type_error(cls, seed):
    with pytest.raises(TypeError, match=rf"`noise_seed` \(={seed!r}\) must be an int"):
        cls(noise_seed=seed)


@pytest.mark.parametrize("cls", [AVCConfig, VCDConfig])
@pytest.mark.parametrize("seed", [-1, 2**64])
def test_out_of_range_noise_seed_is_rejected(cls, seed):
    with pytest.raises(ValueError,
                       match=rf"`noise_seed` \(={seed}\) must be in \[0, 2\*\*64 - 1\]"):
        cls(noise_seed=seed)


@pytest.mark.parametrize("step", [-1, 1000, 5000])
def test_noise_step_outside_the_schedule_is_rejected(step):
    with pytest.raises(ValueError, match=rf"`noise_step` \(={step}\) must be in \[0, 999\]"):
        VCDConfig(noise_step=step)


@pytest.mark.parametrize("step", [0, 999])
def test_noise_step_schedule_ends_are_allowed(step):
    assert VCDConfig(noise_step=step).noise_step == step


@pytest.mark.parametrize("step", [500.0, True, "500"])
def test_non_int_noise_step_is_a_type_error(step):
    with pytest.raises(TypeError, match=rf"`noise_step` \(={step!r}\) must be an int"):
        VCDConfig(noise_step=step)


@pytest.mark.parametrize("cls", [AVCConfig, VCDConfig])
def test_zero_alpha_warns_that_it_is_a_no_op(cls):
    with pytest.warns(UserWarning, match=r"`alpha` \(=0\.0\) is a no-op; output equals plain "
                                         r"decoding"):
        cfg = cls(alpha=0)
    assert cfg.alpha == 0.0


def test_zero_m3id_lam_warns_that_it_is_a_no_op():
    with pytest.warns(UserWarning, match=r"`lam` \(=0\.0\) is a no-op; output equals plain "
                                         r"decoding"):
        M3IDConfig(lam=0.0)


def test_zero_avc_lam_is_not_a_no_op_and_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert AVCConfig(lam=0.0).lam == 0.0


def test_resolve_method_without_a_config_means_plain_decoding():
    assert resolve_method() is None
    assert resolve_method(avc=None, vcd=None, m3id=None) is None


def test_resolve_method_returns_the_single_config():
    avc, vcd, m3id = AVCConfig(), VCDConfig(), M3IDConfig()
    assert resolve_method(avc=avc) is avc
    assert resolve_method(vcd=vcd) is vcd
    assert resolve_method(m3id=m3id) is m3id


def test_resolve_method_rejects_two_methods_and_names_them():
    with pytest.raises(ValueError, match=r"got avc=, vcd= .*pass at most one of avc=, vcd=, "
                                         r"m3id="):
        resolve_method(avc=AVCConfig(), vcd=VCDConfig())
    with pytest.raises(ValueError, match=r"got avc=, vcd=, m3id= "):
        resolve_method(avc=AVCConfig(), vcd=VCDConfig(), m3id=M3IDConfig())


def test_resolve_method_rejects_a_config_of_another_method():
    with pytest.raises(TypeError, match=r"`avc` \(=VCDConfig\(.*AVCConfig.*vcd="):
        resolve_method(avc=VCDConfig())
    with pytest.raises(TypeError, match=r"`m3id` .*Pass `m3id=M3IDConfig\(\.\.\.\)`"):
        resolve_method(m3id=AVCConfig())


@pytest.mark.parametrize("value", [True, 1.0, "avc"])
def test_resolve_method_rejects_non_configs(value):
    with pytest.raises(TypeError, match=r"Pass `avc=AVCConfig\(\.\.\.\)`"):
        resolve_method(avc=value)


def test_resolve_method_rejects_dicts_with_the_unpacking_fix():
    with pytest.raises(TypeError, match=r"Pass `avc=AVCConfig\(\*\*your_dict\)`"):
        resolve_method(avc={"alpha": 1.0})
    with pytest.raises(TypeError, match=r"Pass `vcd=VCDConfig\(\*\*your_dict\)`"):
        resolve_method(vcd={})
