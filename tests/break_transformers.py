"""Run the `llava-avc` command with one of transformers' contracts broken on purpose, as a future
release might break it: what `llava-avc doctor` and the methods must then report (tests/test_transformers_contract.py).

    python tests/break_transformers.py BREAK [--pretend-version V] -- COMMAND ARGS...

BREAK:
    rename-cache-kwarg   generate hands a custom decoding method its cache as `kv_store` (5.25 renamed
                         `past_key_values` to `cache` this way)
    stopping-criteria    GenerationMixin._get_stopping_criteria takes other arguments (a changed private API)
--pretend-version V: llava-avc takes the installed transformers for release V (its
`transformers_compat.INSTALLED`), e.g. one newer than the newest tested release.
"""

import functools
import sys


def rename_cache_kwarg():
    from transformers.generation.utils import GenerationMixin

    original = GenerationMixin.generate

    @functools.wraps(original)
    def generate(self, *args, custom_generate=None, **kwargs):
        if callable(custom_generate):
            inner = custom_generate

            @functools.wraps(inner)
            def renamed(model, *inner_args, **inner_kwargs):
                for name in ("cache", "past_key_values"):
                    if name in inner_kwargs:
                        inner_kwargs["kv_store"] = inner_kwargs.pop(name)
                return inner(model, *inner_args, **inner_kwargs)

            custom_generate = renamed
        return original(self, *args, custom_generate=custom_generate, **kwargs)

    GenerationMixin.generate = generate


def stopping_criteria():
    from transformers.generation.utils import GenerationMixin

    def _get_stopping_criteria(self, criteria_config, **kwargs):
        raise TypeError("_get_stopping_criteria() missing 1 required positional argument: 'criteria_config'")

    GenerationMixin._get_stopping_criteria = _get_stopping_criteria


BREAKS = {"rename-cache-kwarg": rename_cache_kwarg, "stopping-criteria": stopping_criteria}


def main(argv):
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    if "--pretend-version" in options:
        from llava_avc.backends import transformers_compat

        transformers_compat.INSTALLED = options[options.index("--pretend-version") + 1]
    BREAKS[options[0]]()
    from llava_avc.interfaces.cli import main as cli_main

    return cli_main(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
