"""``python -m stage2_relations.heads``: full-size parameter counts of every registered head,
with and without RS-Net, beside the RS-Net paper's Table 2 (SGDET).

Every head is built as its defaults say (the baselines' full sizes) on Action Genome's sizes:
2048-d RoI features, 37 classes and, by default, STTran's 1024x7x7 union map (``--union
pooled`` for the store's default 2048-d vector). What a head derives from the training split
(STKET's priors) does not change its size: the head's placeholders stand in for it here.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from rules.modes import Mode
from stage2_relations.heads import HEADS, HeadContext, RSNet, count_parameters, from_config, head_class
from store.vocabulary import ACTION_GENOME

# RS-Net paper, Table 2 (SGDET): parameters in millions, without and with RS-Net. Its counts
# leave out the detector (STKET's and DSG-DETR's equal their relation models exactly).
PAPER_TABLE2 = {"sttran": (126.3, 158.6), "stket": (219.3, 274.5), "dsgdetr": (186.2, 232.4)}


def parameter_table(mode: Mode = Mode.SGDET, union_shape: tuple[int, ...] = (1024, 7, 7)) -> list[dict]:
    """One row per registered head: parameters without / with RS-Net and the paper's figures."""
    rows = []
    for name in sorted(HEADS):
        context = HeadContext(vocabulary=ACTION_GENOME, mode=mode, feature_dim=2048, union_shape=union_shape)
        context = replace(context, derived=head_class(name).placeholder_derived({}, context))
        head = from_config(name, {}, context)
        bare = count_parameters(head)
        wrapped = count_parameters(RSNet(head))
        paper = PAPER_TABLE2.get(name, (None, None))
        rows.append({"head": name, "params": bare, "rsnet_params": wrapped, "added": wrapped - bare,
                     "paper": paper[0], "paper_rsnet": paper[1]})
    return rows


def format_parameter_table(rows: list[dict]) -> str:
    def m(x):
        return "-" if x is None else f"{x / 1e6:.2f}" if x > 1e4 else f"{x:.1f}"

    lines = [f"{'head':<10} {'params (M)':>11} {'+ RS-Net':>9} {'added':>7}   {'paper':>6} {'+ RS-Net':>9} {'added':>7}"]
    for r in rows:
        p, pr = r["paper"], r["paper_rsnet"]
        lines.append(f"{r['head']:<10} {m(r['params']):>11} {m(r['rsnet_params']):>9} {m(r['added']):>7}   "
                     f"{m(p):>6} {m(pr):>9} {'-' if p is None else f'{pr - p:.1f}':>7}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=[m.value for m in Mode], default="sgdet")
    ap.add_argument("--union", choices=["map", "pooled"], default="map",
                    help="union feature: STTran's 1024x7x7 map (as the paper's models) or the store's pooled 2048-d vector")
    args = ap.parse_args()
    rows = parameter_table(Mode(args.mode), (1024, 7, 7) if args.union == "map" else (2048,))
    print(f"full-size parameters, {args.mode.upper()}, union {args.union}, RS-Net d_m 640 (the paper's Table 2 beside)")
    print(format_parameter_table(rows))


if __name__ == "__main__":
    main()
