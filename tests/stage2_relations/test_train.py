"""Stage-2 training: learning on a small learnable store, exact resume, 2-process DDP, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from stage2_relations.data import VideoDataset
from stage2_relations.recipe import TrainConfig, load_config
from stage2_relations.scoring import score_model
from stage2_relations.train import build_from_config, train
from stage2_relations.view_options import ViewOptions
from store import open_store
from tests.helpers import REPO
from tests.helpers.stage2 import TINY_HEAD, TINY_RSNET, one_thread, write_learnable_store

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return write_learnable_store(tmp_path_factory.mktemp("s2train") / "learn.h5")


def _cfg(store_path, rsnet=None, **kw) -> TrainConfig:
    base = dict(store=str(store_path), mode="predcls", head="sttran", head_cfg=TINY_HEAD, rsnet=rsnet, epochs=3,
                lr=3e-3, videos_per_batch=2, preload=True, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("rsnet", [None, TINY_RSNET], ids=["sttran", "sttran+rsnet"])
def test_training_lowers_loss_and_beats_untrained(store_path, tmp_path, rsnet):
    cfg = _cfg(store_path, rsnet)
    torch.manual_seed(0)
    untrained = build_from_config(cfg, open_store(store_path).meta)
    val = VideoDataset(str(store_path), "val", "predcls", train=False)
    r20_untrained = score_model(untrained, val, constraints=("with",))[0]["with"].recall[20]
    result = train(cfg, tmp_path / "run", progress=False, echo=lambda s: None)
    h = result["history"]
    assert h[-1]["loss_total"] < h[0]["loss_total"]
    assert h[-1]["val_R@20"] > r20_untrained + 0.1, (r20_untrained, h)
    for name in ("config.yaml", "run.json", "derived.pt", "log.csv", "log.json", "last.pth", "best.pth"):
        assert (tmp_path / "run" / name).exists(), name
    ckpt = torch.load(tmp_path / "run" / "last.pth", weights_only=False)
    assert ckpt["config"]["rsnet"] == rsnet and "git_revision" in ckpt["provenance"]
    assert "torch" in json.loads((tmp_path / "run" / "run.json").read_text())["versions"]


def test_resume_continues_exactly(store_path, tmp_path):
    # dropout on, so that the reseeded RNG matters
    cfg = _cfg(store_path, {**TINY_RSNET, "dropout": 0.1}, epochs=2, head_cfg={**TINY_HEAD, "dropout": 0.1})
    full = train(cfg, tmp_path / "full", progress=False, echo=lambda s: None)
    train(dataclasses.replace(cfg, epochs=1), tmp_path / "part", progress=False, echo=lambda s: None)
    resumed = train(cfg, tmp_path / "part", resume=True, progress=False, echo=lambda s: None)
    assert [h["loss_total"] for h in resumed["history"]] == [h["loss_total"] for h in full["history"]]
    a = torch.load(tmp_path / "full" / "last.pth", weights_only=False)
    b = torch.load(tmp_path / "part" / "last.pth", weights_only=False)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def test_config_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"mode": "sgdet", "head_cfg": {"hidden": 8}, "rsnet": None}))
    cfg = load_config(p, {"head_cfg.embed_dim": 4, "rsnet.temporal_token": "mean", "lr": 0.1, "seed": None})
    assert cfg.mode == "sgdet" and cfg.head_cfg == {"hidden": 8, "embed_dim": 4}
    assert cfg.rsnet == {"temporal_token": "mean"} and cfg.lr == 0.1 and cfg.seed == 0
    with pytest.raises(ValueError, match="unknown field .learning_rate."):
        load_config(p, {"learning_rate": 1})


def test_cli_train_and_eval_run(store_path, tmp_path):
    from cli import main

    recipe = tmp_path / "demo.yaml"
    recipe.write_text(yaml.safe_dump(dataclasses.asdict(_cfg(store_path, TINY_RSNET, epochs=1))))
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--config", str(recipe), "--out", str(run), "--no-progress",
                                  "--set", "head_cfg.hidden=12"])
    assert r.exit_code == 0, r.output
    assert "epoch 1/1" in r.output and "train: sttran + RS-Net predcls" in r.output
    assert yaml.safe_load((run / "config.yaml").read_text())["head_cfg"]["hidden"] == 12
    preds = tmp_path / "preds.npz"
    r = CliRunner().invoke(main, ["eval", "--run", str(run), "--split", "val", "--save-predictions", str(preds),
                                  "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    assert "R@20" in r.output and "M parameters" in r.output and "frames/s" in r.output
    for name in ("metrics.json", "metrics.csv", "predicate_recall.csv", "predicate_recall.png", "table.txt",
                 "frames.png"):
        assert (tmp_path / "ev" / name).exists(), name
    meta = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert meta["parameters"] > 0 and meta["inference"]["fps"] > 0
    # the saved predictions score the same without the model
    r2 = CliRunner().invoke(main, ["eval", "--predictions", str(preds), "--constraint", "with"])
    assert r2.exit_code == 0, r2.output
    with_row = lambda out: next(line for line in out.splitlines() if line.startswith("with"))  # noqa: E731
    assert with_row(r2.output) == with_row(r.output)
    r3 = CliRunner().invoke(main, ["eval", "--run", str(run), "--predictions", str(preds)])
    assert r3.exit_code != 0 and "exactly one" in r3.output


def test_ddp_two_processes_gloo(store_path, tmp_path):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(dataclasses.asdict(_cfg(store_path, TINY_RSNET, epochs=1, videos_per_batch=1))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "cli.py"), "train", "--config", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "world size 2" in p.stdout and p.stdout.count("epoch 1/1") == 1  # rank 0 alone reports
    ckpt = torch.load(tmp_path / "run" / "last.pth", weights_only=False)
    assert ckpt["epoch"] == 1 and json.loads((tmp_path / "run" / "run.json").read_text())["world_size"] == 2


@pytest.mark.parametrize("mode", ["sgcls", "sgdet"])
def test_train_and_evaluate_other_modes(store_path, tmp_path, mode):
    from stage2_relations.eval_request import EvalRequest, Protocol
    from stage2_relations.evaluate_checkpoint import evaluate_checkpoint

    cfg = _cfg(store_path, TINY_RSNET, epochs=1, mode=mode)
    result = train(cfg, tmp_path / "run", progress=False, echo=lambda s: None)
    assert result["history"][0]["loss_object"] > 0
    request = EvalRequest(run_dir=tmp_path / "run", split="val", protocol=Protocol(constraints=("with",)),
                          out_dir=tmp_path / "ev")
    out = evaluate_checkpoint(request, echo=lambda s: None)
    r = out["results"]
    assert 0 <= next(iter(r.values())).recall[20] <= 1 and (tmp_path / "ev" / "frames.png").exists()


def test_rsnet_learns_to_score_negatives_lower(store_path, tmp_path):
    """On the learnable store the negatives (unmatched detections) are of bystander classes:
    after training, p_{t,0} separates them from the positives on the validation videos."""
    from stage2_relations.checkpoints import load_checkpoint
    from stage2_relations.data import collate

    cfg = _cfg(store_path, TINY_RSNET, epochs=12)
    result = train(cfg, tmp_path / "run", progress=False, echo=lambda s: None)
    h = result["history"]
    assert h[-1]["loss_relation_score"] < 0.5 * h[0]["loss_relation_score"]
    model, _, _ = load_checkpoint(tmp_path / "run" / "last.pth")
    ds = VideoDataset(str(store_path), "val", "predcls", train=True,
                      options=ViewOptions(negatives=True, negative_ratio=100.0))
    batch = collate([ds[i] for i in range(len(ds))], "predcls", True)
    assert (~batch.pair_positive).sum() >= 5
    with torch.no_grad():
        p0 = model(batch).pair_scores
    assert p0[batch.pair_positive].mean() > p0[~batch.pair_positive].mean() + 0.2
