"""Run the `llava-avc` command against a Hugging Face hub simulated on disk, so that a first download, a
resume and a new revision can be tested without a network (tests/test_records_and_scores.py).

    python tests/fake_hub.py HUB_DIR -- COMMAND ARGS...

HUB_DIR/<owner>--<name>/<revision>/ holds a checkpoint's files per revision and HUB_DIR/<owner>--<name>/main
names the current revision. Loading the hub id `<owner>/<name>` first "downloads" the current revision into
the local cache (HF_HUB_CACHE: snapshots/<revision>/ and refs/main, the layout the hub library keeps),
then loads it from there with the real loaders. Only the network is simulated: llava-avc's check that the
hub is reachable answers yes, and the hub library reads the cache (HF_HUB_OFFLINE=1 for it alone).
"""

import os
import shutil
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # the hub library reads the cache, never a network
os.environ.pop("TRANSFORMERS_OFFLINE", None)


def download(hub: Path, repo_id: str) -> None:
    """Copy the hub's current revision of `repo_id` into the local cache, as a download would."""
    source = hub / repo_id.replace("/", "--")
    if not source.is_dir():
        return  # not a repository of this hub: a local path
    revision = (source / "main").read_text().strip()
    cache = Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo_id.replace('/', '--')}"
    snapshot = cache / "snapshots" / revision
    if not snapshot.is_dir():
        shutil.copytree(source / revision, snapshot)
    (cache / "refs").mkdir(parents=True, exist_ok=True)
    (cache / "refs" / "main").write_text(revision)


def main(argv):
    split = argv.index("--")
    hub, command = Path(argv[0]), argv[split + 1:]
    from llava_avc.backends import checkpoints, pipeline_class

    checkpoints.hub_offline_reason = lambda: None  # the user is online ...
    checkpoints.hub_unreachable_reason = lambda timeout=None: None  # ... and the hub answers
    for backend in ("llava", "hf"):
        try:
            cls = pipeline_class(backend)
        except ImportError:
            continue
        original = cls.load.__func__

        def load(cls, model_path, *args, _original=original, **kwargs):
            download(hub, model_path)
            return _original(cls, model_path, *args, **kwargs)

        cls.load = classmethod(load)
    from llava_avc.interfaces.cli import main as cli_main

    return cli_main(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
