"""``cli.py view``: a static HTML page of scene graphs (``predict``'s documents, or an evaluated
run's predictions file turned into documents by :mod:`stage2_relations.scene_graphs`).

What is written into the output folder (nothing is fetched: it opens from disk, ``file://``):

* ``index.html``: the page, its CSS and script inline, and the list of videos and runs;
* ``data/NNNN.js``: one video's scene graphs, loaded when the video is chosen (a classic
  ``<script>``, which browsers allow from ``file://``), so the page stays small for a whole
  test split;
* ``frames/NNNN/KEY.jpg``: each frame as a small JPEG (at most ``thumb_width`` wide).

Per video the page shows the frames with their boxes and labels (per run, side by side), the
chosen frame's triplets (rank, subject, predicate, object, score, RS-Net's relevance, hit
or miss against the ground truth), the ground truth's triplets with the rank that recalls
each, the pairs whose triplets RS-Net's relevance pushed below the cut (in the top-K by
``s_subj * s_obj * p`` alone, out of it once multiplied by ``p_{t,0}``), and the scene graph
over time: one row per (subject, predicate, object) labels, one column per frame, shaded by
the best score of the triplets shown (relative to the run's best in the video; the cell's
title gives the score), outlined green where the ground truth has the triplet and the top-K
recalls it, red where it misses it. Filters: minimum score, top-K, predicate groups.

Runs are aligned by frame key: two runs of the same videos (e.g. STTran and STTran + RS-Net,
or ``predict`` every frame against ``eval`` on the annotated ones) appear side by side; a frame
one run lacks shows as empty.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from common.errors import InputError, UserError
from common.files import atomic_write

log = logging.getLogger(__name__)

ReadFrames = Callable[[dict], "dict[str, np.ndarray]"]
"""Pictures of a document's frames: ``{frame key: uint8 (H, W, 3) RGB}`` (missing keys: no picture)."""


@dataclass(frozen=True)
class ViewRun:
    """One run on the page: its name and its documents (one per video)."""

    name: str
    documents: Sequence[dict]


@dataclass(frozen=True)
class ViewOptions:
    """top_k: the page's initial cut; max_triplets: the triplets kept per frame and run (by
    rank, plus those within it by the score without RS-Net's relevance); thumb_width: pixels
    of the JPEGs; quality: their JPEG quality."""

    top_k: int = 10
    max_triplets: int = 50
    thumb_width: int = 320
    quality: int = 70


def load_run(path: Path | str, name: str | None = None) -> ViewRun:
    """A run from ``predict``'s output folder (its ``VIDEO.json`` documents), one document, or
    a predictions file of ``eval --save-predictions`` (``.npz``: ground truth and hits)."""
    from stage2_relations.scene_graphs import SCHEMA_FILE, documents_from_predictions, read_document

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json") if p.name != SCHEMA_FILE)
        if not files:
            raise InputError(f"{path}: no scene-graph JSON files (a `cli.py predict --out` folder holds VIDEO.json)")
        return ViewRun(name or path.name, [read_document(p) for p in files])
    if path.suffix == ".npz":
        return ViewRun(name or path.stem, documents_from_predictions(path, name=name))
    return ViewRun(name or path.stem, [read_document(path)])


def _round(v: float, digits: int = 4) -> float:
    return float(f"{v:.{digits}g}")


def _base_ranks(frame: dict) -> list[int]:
    """Each triplet's rank by ``s_subj * s_obj * p``, the score without RS-Net's relevance
    (ties in the order of the ranked list, as :mod:`~stage2_relations.evaluation.triplets`)."""
    boxes = frame["boxes"]
    base = [boxes[t["subject"]]["score"] * boxes[t["object"]]["score"] * t["predicate_score"]
            for t in frame["triplets"]]
    order = sorted(range(len(base)), key=lambda i: -base[i])
    ranks = [0] * len(base)
    for r, i in enumerate(order):
        ranks[i] = r
    return ranks


def _frame_data(frame: dict, options: ViewOptions) -> dict:
    """One run's frame, compact: boxes [x1, y1, x2, y2, label, score]; triplets
    [subject, object, predicate id, score, predicate score, relevance or -1, hit (1/0/-1),
    rank, rank without relevance]; GT boxes [x1, y1, x2, y2, label] and triplets
    [subject, object, predicate id, rank that recalls it or -1]."""
    base = _base_ranks(frame)
    kept = [(t, b) for t, b in zip(frame["triplets"], base)
            if t["rank"] < options.max_triplets or b < options.max_triplets]
    out = {
        "boxes": [[*(round(v, 1) for v in b["box"]), b["label_id"], _round(b["score"])] for b in frame["boxes"]],
        "trip": [[t["subject"], t["object"], t["predicate_id"], _round(t["score"]), _round(t["predicate_score"]),
                  -1 if t["relevance"] is None else _round(t["relevance"]),
                  -1 if t["hit"] is None else int(t["hit"]), t["rank"], b] for t, b in kept],
    }
    gt = frame.get("ground_truth")
    if gt is not None:
        out["gt"] = {"boxes": [[*(round(v, 1) for v in b["box"]), b["label_id"]] for b in gt["boxes"]],
                     "trip": [[t["subject"], t["object"], t["predicate_id"],
                               -1 if t["recalled_at_rank"] is None else t["recalled_at_rank"]] for t in gt["triplets"]]}
    return out


def _thumbnail(image: np.ndarray, width: int) -> Image.Image:
    im = Image.fromarray(np.ascontiguousarray(image))
    if im.width > width:
        im = im.resize((width, max(1, round(im.height * width / im.width))), Image.BILINEAR)
    return im


def _check_vocabularies(runs: Sequence[ViewRun]) -> dict:
    vocab = None
    for run in runs:
        for doc in run.documents:
            if vocab is None:
                vocab = doc["vocabulary"]
            elif doc["vocabulary"] != vocab:
                raise InputError(f"run {run.name!r}, video {doc['video']!r}: another vocabulary than the first run's; "
                                 f"the page compares runs of one vocabulary")
    if vocab is None:
        raise InputError("no scene graphs to show")
    return vocab


def write_page(runs: Sequence[ViewRun], out_dir: Path | str, *, read_frames: ReadFrames | None = None,
               videos: Sequence[str] | None = None, options: ViewOptions = ViewOptions(),
               progress: bool = True) -> Path:
    """Write the page of ``runs`` (of ``videos``, default every video of any run, sorted) into
    ``out_dir`` (its ``index.html``, ``data/`` and ``frames/`` are replaced) and return the
    path of ``index.html``. ``read_frames`` gives the pictures (none: boxes on a blank frame)."""
    out_dir = Path(out_dir)
    vocab = _check_vocabularies(runs)
    by_run = [{d["video"]: d for d in run.documents} for run in runs]
    names = sorted(set().union(*by_run)) if videos is None else list(videos)
    missing = [v for v in names if not any(v in r for r in by_run)]
    if missing:
        raise InputError(f"video {missing[0]!r} is in none of the runs")
    for sub in ("data", "frames"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
        (out_dir / sub).mkdir(parents=True)
    listing = []
    for vi, video in enumerate(tqdm(names, desc="view", unit="video", disable=not progress)):
        docs = [r.get(video) for r in by_run]
        frames: dict[str, dict] = {}
        for doc in docs:
            for f in doc["frames"] if doc else ():
                frames.setdefault(f["key"], {"key": f["key"], "w": f["width"], "h": f["height"], "img": None})
        keys = sorted(frames, key=lambda k: (frames[k]["key"].rsplit("/", 1)[-1]))
        pictures: dict[str, np.ndarray] = {}
        if read_frames is not None:
            for doc in docs:
                if doc is None:
                    continue
                try:
                    pictures.update({k: v for k, v in read_frames(doc).items() if k not in pictures})
                except (UserError, OSError) as e:  # pictures are an extra: the graphs show without them
                    log.warning("%s: no pictures (%s)", video, e)
        folder = out_dir / "frames" / f"{vi:04d}"
        for k in keys:
            if k in pictures:
                folder.mkdir(exist_ok=True)
                name = k.rsplit("/", 1)[-1].rsplit(".", 1)[0] + ".jpg"
                _thumbnail(pictures[k], options.thumb_width).save(folder / name, quality=options.quality)
                frames[k]["img"] = f"frames/{vi:04d}/{name}"
        run_frames = []
        for doc in docs:
            at = {f["key"]: f for f in doc["frames"]} if doc else {}
            run_frames.append([_frame_data(at[k], options) if k in at else None for k in keys])
        data = {"video": video, "frames": [frames[k] for k in keys], "runs": run_frames}
        with atomic_write(out_dir / "data" / f"{vi:04d}.js", "w") as f:
            f.write("SG.loaded(" + json.dumps(data, separators=(",", ":")) + ");\n")
        listing.append({"name": video, "file": f"data/{vi:04d}.js", "frames": len(keys),
                        "hits": [_summary(d) for d in docs]})
    head = {"vocabulary": vocab, "top_k": options.top_k,
            "runs": [{"name": r.name, "rsnet": any(d["run"]["rsnet"] for d in r.documents),
                      "evaluated": any(f["ground_truth"] is not None for d in r.documents for f in d["frames"][:1])}
                     for r in runs],
            "videos": listing}
    page = out_dir / "index.html"
    with atomic_write(page, "w") as f:
        f.write(_PAGE.replace("/*DATA*/", json.dumps(head, separators=(",", ":")).replace("</", "<\\/"))
                .replace("<!--TITLE-->", html.escape(" vs ".join(r.name for r in runs))))
    return page


def _summary(doc: dict | None) -> str:
    """A video's line in the list: frames and, for an evaluated run, GT triplets recalled at 20."""
    if doc is None:
        return "-"
    gts = [t for f in doc["frames"] if f["ground_truth"] for t in f["ground_truth"]["triplets"]]
    if not gts:
        return f"{len(doc['frames'])} frames"
    hit = sum(t["recalled_at_rank"] is not None and t["recalled_at_rank"] < 20 for t in gts)
    return f"R@20 {hit}/{len(gts)}"


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>scene graphs: <!--TITLE--></title>
<style>
body{font:13px/1.35 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{position:sticky;top:0;background:#fff;border-bottom:1px solid #ccc;padding:6px 10px;z-index:2}
header label{margin-right:12px}
#main{display:flex}
#videos{width:210px;max-height:calc(100vh - 50px);overflow:auto;border-right:1px solid #ddd;background:#fff}
#videos div{padding:3px 8px;cursor:pointer;border-bottom:1px solid #eee}
#videos div.sel{background:#dbe9ff}
#videos small{color:#777;display:block}
#view{flex:1;padding:8px;overflow:auto}
#strip{display:flex;gap:4px;overflow-x:auto;padding-bottom:4px}
#strip div{border:2px solid transparent;cursor:pointer;font-size:11px;text-align:center}
#strip div.sel{border-color:#2a6fdb}
#strip img,#strip canvas{height:54px;display:block}
#runs{display:flex;gap:14px;flex-wrap:wrap;margin-top:8px}
.run{flex:1;min-width:320px;background:#fff;border:1px solid #ddd;padding:6px}
.run h3{margin:0 0 4px;font-size:14px}
.pic{position:relative;width:100%;max-width:480px}
.pic img{width:100%;display:block}
.pic svg{position:absolute;left:0;top:0;width:100%;height:100%}
.pic .blank{width:100%;background:#eee}
table{border-collapse:collapse;margin-top:6px}
td,th{padding:1px 5px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}
tr.hit td{background:#e3f6e3}tr.miss td{background:#fde8e8}
tr.sup td{color:#999;text-decoration:line-through}
.tl td{width:14px;height:14px;padding:0;border:1px solid #fff}
.tl td.gt{outline:2px solid #d33;outline-offset:-2px}.tl td.gtok{outline:2px solid #2a2;outline-offset:-2px}
.tl th{font-weight:normal;font-size:11px;padding-right:6px}
.tl th.cur{background:#dbe9ff}.tl th.runname{text-align:left;padding-top:6px}.tl td.none{background:repeating-linear-gradient(45deg,#fff,#fff 3px,#eee 3px,#eee 5px)!important}
.note{color:#666;font-size:12px}
</style></head><body>
<header>
<b>scene graphs</b> &nbsp;
<label>min score <input id="minscore" type="range" min="0" max="1" step="0.01" value="0"> <span id="minval">0</span></label>
<label>top-K <select id="topk"><option value="5">5</option><option value="10">10</option><option value="20">20</option><option value="50">50</option><option value="100000">all</option></select></label>
<label><input type="checkbox" class="grp" value="attention" checked> attention</label>
<label><input type="checkbox" class="grp" value="spatial" checked> spatial</label>
<label><input type="checkbox" class="grp" value="contacting" checked> contacting</label>
<span class="note" id="legend"></span>
</header>
<div id="main"><div id="videos"></div><div id="view"><div id="title"></div><div id="strip"></div><div id="runs"></div><h3>scene graph over time</h3><div id="timeline"></div></div></div>
<script>
"use strict";
const H=/*DATA*/;
const V=H.vocabulary, GR=["attention","spatial","contacting"];
const groupOf=p=>GR.find(g=>p>=V.groups[g][0]&&p<V.groups[g][1]);
const S={video:-1,frame:0,data:null};
const $=id=>document.getElementById(id);
const esc=s=>String(s).replace(/[&<>"]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const COLORS=["#e6194b","#3cb44b","#4363d8","#f58231","#911eb4","#42d4f4","#f032e6","#9a6324","#469990","#808000"];
window.SG={loaded(d){S.data=d;S.frame=0;render();}};
function filters(){return{min:+$("minscore").value,k:+$("topk").value,groups:[...document.querySelectorAll(".grp:checked")].map(e=>e.value)};}
function shown(t,f){return t[7]<f.k&&t[3]>=f.min&&f.groups.includes(groupOf(t[2]));}
function suppressed(t,f){return t[5]>=0&&t[8]<f.k&&t[7]>=f.k&&f.groups.includes(groupOf(t[2]));}
function name(fr,i){return V.objects[fr.boxes[i][4]]+"#"+i;}
function loadVideo(i){S.video=i;S.data=null;
 document.querySelectorAll("#videos div").forEach((e,j)=>e.classList.toggle("sel",j===i));
 const s=document.createElement("script");s.src=H.videos[i].file;document.body.appendChild(s);}
function picture(frame,fr,f){
 const w=frame.w,h=frame.h,u=w/440;let svg=`<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none">`;
 if(fr){const used=new Set();fr.trip.filter(t=>shown(t,f)).forEach(t=>{used.add(t[0]);used.add(t[1]);});
  [...used].forEach(i=>{const b=fr.boxes[i],c=COLORS[i%10];
   svg+=`<rect x="${b[0]}" y="${b[1]}" width="${b[2]-b[0]}" height="${b[3]-b[1]}" fill="none" stroke="${c}" stroke-width="${2*u}"/>`+
   `<text x="${b[0]+2*u}" y="${b[1]-3*u}" font-size="${12*u}" font-weight="bold" fill="${c}" paint-order="stroke" stroke="#fff" stroke-width="${2.5*u}">${esc(name(fr,i))}</text>`;});}
 svg+="</svg>";
 const img=frame.img?`<img src="${frame.img}" alt="${esc(frame.key)}">`:`<div class="blank" style="aspect-ratio:${w}/${h}"></div>`;
 return `<div class="pic">${img}${svg}</div>`;}
function tripletRows(fr,f,evaluated){
 const rows=fr.trip.filter(t=>shown(t,f)).sort((a,b)=>a[7]-b[7]);
 let s=`<table class="trips"><tr><th>#</th><th>subject</th><th>predicate</th><th>object</th><th>score</th><th>relevance</th>${evaluated?"<th>GT</th>":""}</tr>`;
 rows.forEach(t=>{const cls=t[6]===1?"hit":t[6]===0?"miss":"";
  s+=`<tr class="${cls}" data-s="${esc(name(fr,t[0]))}" data-p="${esc(V.predicates[t[2]])}" data-o="${esc(name(fr,t[1]))}" data-score="${t[3]}" data-rank="${t[7]}"><td>${t[7]+1}</td><td>${esc(name(fr,t[0]))}</td><td>${esc(V.predicates[t[2]])}</td><td>${esc(name(fr,t[1]))}</td><td>${t[3].toFixed(4)}</td><td>${t[5]<0?"":t[5].toFixed(3)}</td>${evaluated?`<td>${t[6]===1?"hit":"no match"}</td>`:""}</tr>`;});
 s+="</table>";
 const sup=fr.trip.filter(t=>suppressed(t,f));
 if(sup.length){s+=`<div class="note">pushed below the top-${f.k} by RS-Net's relevance:</div><table class="sup">`;
  sup.forEach(t=>{s+=`<tr class="sup" data-s="${esc(name(fr,t[0]))}" data-p="${esc(V.predicates[t[2]])}" data-o="${esc(name(fr,t[1]))}"><td>${t[8]+1}&rarr;${t[7]+1}</td><td>${esc(name(fr,t[0]))}</td><td>${esc(V.predicates[t[2]])}</td><td>${esc(name(fr,t[1]))}</td><td>relevance ${t[5].toFixed(3)}</td></tr>`;});
  s+="</table>";}
 if(fr.gt){s+=`<div class="note">ground truth (hit: recalled in the top-${f.k}):</div><table class="gts">`;
  fr.gt.trip.filter(t=>f.groups.includes(groupOf(t[2]))).forEach(t=>{const ok=t[3]>=0&&t[3]<f.k;
   s+=`<tr class="${ok?"hit":"miss"}" data-p="${esc(V.predicates[t[2]])}"><td>${esc(V.objects[fr.gt.boxes[t[0]][4]])}</td><td>${esc(V.predicates[t[2]])}</td><td>${esc(V.objects[fr.gt.boxes[t[1]][4]])}</td><td>${ok?"hit at "+(t[3]+1):"miss"}</td></tr>`;});
  s+="</table>";}
 return s;}
function labelKey(fr,t){return V.objects[fr.boxes[t[0]][4]]+" \u2013 "+V.predicates[t[2]]+" \u2013 "+V.objects[fr.boxes[t[1]][4]];}
function gtKey(fr,t){return V.objects[fr.gt.boxes[t[0]][4]]+" \u2013 "+V.predicates[t[2]]+" \u2013 "+V.objects[fr.gt.boxes[t[1]][4]];}
function timeline(f){
 const d=S.data,n=d.frames.length,keys=new Set();
 d.runs.forEach(frs=>frs.forEach(fr=>{if(!fr)return;fr.trip.filter(t=>shown(t,f)).forEach(t=>keys.add(labelKey(fr,t)));
  if(fr.gt)fr.gt.trip.filter(t=>f.groups.includes(groupOf(t[2]))).forEach(t=>keys.add(gtKey(fr,t)));}));
 const rows=[...keys].sort();
 if(!rows.length)return "<div class='note'>no triplet passes the filters</div>";
 let s=`<table class="tl"><tr><th></th>`+d.frames.map((fm,j)=>`<th class="${j===S.frame?"cur":""}">${j+1}</th>`).join("")+"</tr>";
 d.runs.forEach((frs,ri)=>{
  const best=frs.map(fr=>{const m={};if(fr)fr.trip.filter(t=>shown(t,f)).forEach(t=>{const k=labelKey(fr,t);m[k]=Math.max(m[k]||0,t[3]);});return m;});
  const top=Math.max(1e-12,...best.flatMap(m=>Object.values(m)));
  const gt=frs.map(fr=>{const m={};if(fr&&fr.gt)fr.gt.trip.forEach(t=>{const k=gtKey(fr,t);m[k]=m[k]||(t[3]>=0&&t[3]<f.k);});return m;});
  s+=`<tr><th colspan="${n+1}" class="runname"><b>${esc(H.runs[ri].name)}</b></th></tr>`;
  rows.forEach(k=>{s+=`<tr data-run="${ri}"><th>${esc(k)}</th>`;for(let j=0;j<n;j++){const v=best[j][k]||0,g=gt[j][k];
   const cls=(frs[j]?"":"none ")+(g===undefined?"":g?"gtok":"gt");
   s+=`<td class="${cls}" title="${esc(k)} frame ${j+1}: ${v.toFixed(4)}" style="background:rgba(42,111,219,${v>0?0.1+0.9*v/top:0})" data-score="${v}"></td>`;}
   s+="</tr>";});});
 return s+"</table>";}
function render(){
 const f=filters();$("minval").textContent=f.min.toFixed(2);
 if(!S.data){return;}
 const d=S.data,j=S.frame,frame=d.frames[j];
 $("title").innerHTML=`<h2>${esc(d.video)} <span class="note">${esc(frame.key)} (${j+1}/${d.frames.length})</span></h2>`;
 $("strip").innerHTML=d.frames.map((fm,i)=>`<div class="${i===j?"sel":""}" data-i="${i}">${fm.img?`<img src="${fm.img}">`:`<canvas width="72" height="54"></canvas>`}${i+1}</div>`).join("");
 document.querySelectorAll("#strip div").forEach(e=>e.onclick=()=>{S.frame=+e.dataset.i;render();});
 $("runs").innerHTML=d.runs.map((frs,ri)=>{const fr=frs[j],r=H.runs[ri];
  return `<div class="run" data-run="${ri}"><h3>${esc(r.name)}${r.rsnet&&!/RS-Net/.test(r.name)?" (RS-Net)":""}</h3>${picture(frame,fr,f)}${fr?tripletRows(fr,f,r.evaluated):"<div class='note'>frame not predicted by this run</div>"}</div>`;}).join("");
 $("timeline").innerHTML=timeline(f);}
$("videos").innerHTML=H.videos.map((v,i)=>`<div data-i="${i}">${esc(v.name)}<small>${v.frames} frames; ${v.hits.map(esc).join(" | ")}</small></div>`).join("");
document.querySelectorAll("#videos div").forEach(e=>e.onclick=()=>loadVideo(+e.dataset.i));
if(![...$("topk").options].some(o=>o.value===String(H.top_k)))$("topk").add(new Option(String(H.top_k)));
$("topk").value=String(H.top_k);
["minscore","topk"].forEach(id=>{$(id).addEventListener("input",render);$(id).addEventListener("change",render);});
document.querySelectorAll(".grp").forEach(e=>e.addEventListener("change",render));
$("legend").textContent="runs: "+H.runs.map(r=>r.name).join(" | ");
if(H.videos.length)loadVideo(0);
</script></body></html>
"""


__all__ = ["ViewRun", "ViewOptions", "load_run", "write_page"]
