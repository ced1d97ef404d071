"""Peak memory of `tokprob run encoding` on a model of GPT-2 XL's shape (the paper's
largest GPT-2: 1.5B parameters), on the CPU.

A GPT-2 of d = 1,600, 48 layers and 25 heads with random weights and the default model's
tokenizer (|V| = 49,152, the vocabulary sized to it) is built from its config and saved
with save_pretrained (safetensors) once, in a child process, under
`<data>/bench/gpt2-xl-shape/`. Then `python -m cli.main run encoding --model <it>
--max-tokens 2048 --device cpu` runs in a fresh data folder (the default corpus), while
this process polls /proc every 0.1 s for the resident memory of the command's whole
process tree (the CLI and the Prefect server it starts) and for which stage runs (a
stage's temporary folder appears in the store when it starts, its manifest when it ends).

Goals: the whole command's peak at most 1.3 × the model's float32 size; the embeddings
stage's rise over the memory the command held when it started at most 1.5 × the size
of E (float32). With --quick the model has GPT-2 small's shape (d = 768, 12 layers).

    python -m benchmarks --only scale_memory [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import Fixture, Result, header, verdict

NAME = "scale_memory"
WHOLE_GOAL = 1.3
EMBEDDINGS_GOAL = 1.5
SHAPES = {"gpt2-xl-shape": {"n_embd": 1600, "n_layer": 48, "n_head": 25},
          "gpt2-small-shape": {"n_embd": 768, "n_layer": 12, "n_head": 12}}
POLL_S = 0.1
TIMEOUT_S = 3600
MB = 1 << 20


def run(fixture: Fixture, quick: bool) -> list[Result]:
    name = "gpt2-small-shape" if quick else "gpt2-xl-shape"
    header(NAME, f"peak RSS of `run encoding --max-tokens 2048` on a {name} model, CPU")
    folder = fixture.workspace.root / "bench" / name
    if not (folder / "config.json").is_file():
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "benchmarks.scale_memory", "--build", name,
                        fixture.model_source.path, str(folder)], check=True,
                       cwd=Path(__file__).parent.parent)
        print(f"  built and saved {name} in {time.perf_counter() - started:.0f} s")
    config = json.loads((folder / "config.json").read_text())
    vocab, d = config["vocab_size"], config["n_embd"]
    model_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    e_bytes = vocab * d * 4
    with tempfile.TemporaryDirectory(prefix="tokprob-bench-") as scratch:
        data = Path(scratch) / "data"
        data.mkdir()
        (data / "downloads").symlink_to(fixture.workspace.downloads)
        trace = _traced_run(folder, data, Path(scratch) / "prefect")
    if trace is None:
        return [Result(NAME, "whole-command peak RSS ÷ float32 model", "failed",
                       f"≤ {WHOLE_GOAL}", False)]
    whole = trace["peak"] / model_bytes
    embeddings = trace["stages"].get("embeddings", {})
    rise = embeddings.get("rise", float("nan")) / e_bytes
    print(f"  model {model_bytes / MB:,.0f} MB (float32 safetensors), E {e_bytes / MB:,.0f} MB"
          f" ({vocab:,} × {d:,}); whole command {trace['seconds']:.0f} s")
    print(f"  whole command: peak RSS {trace['peak'] / MB:,.0f} MB = {whole:.2f} × the model;"
          f" goal ≤ {WHOLE_GOAL}: {verdict(whole <= WHOLE_GOAL)}")
    print(f"  embeddings stage: rise {embeddings.get('rise', 0) / MB:,.0f} MB = {rise:.2f} × E;"
          f" goal ≤ {EMBEDDINGS_GOAL}: {verdict(rise <= EMBEDDINGS_GOAL)}")
    for stage, numbers in trace["stages"].items():
        print(f"  {stage:<14} {numbers['seconds']:7.1f} s, peak RSS "
              f"{numbers['peak'] / MB:8,.0f} MB (rise {numbers['rise'] / MB:,.0f} MB)")
    return [
        Result(NAME, f"whole-command peak RSS ÷ float32 model ({name})", f"{whole:.2f}",
               f"≤ {WHOLE_GOAL}", whole <= WHOLE_GOAL),
        Result(NAME, "embeddings-stage RSS rise ÷ E", f"{rise:.2f}", f"≤ {EMBEDDINGS_GOAL}",
               rise <= EMBEDDINGS_GOAL),
    ]


def _traced_run(model: Path, data: Path, prefect_home: Path) -> dict | None:
    """Run the command, polling its process tree's memory and the store's stages."""
    command = [sys.executable, "-m", "cli.main", "run", "encoding", "--model", str(model),
               "--max-tokens", "2048", "--device", "cpu", "--data-dir", str(data), "--json"]
    env = os.environ | {"PREFECT_HOME": str(prefect_home)}
    env.pop("PREFECT_API_URL", None)
    started = time.monotonic()
    log = data.parent / "run.log"
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                   cwd=Path(__file__).parent.parent)
        peak, stages = 0, {}
        while process.poll() is None and time.monotonic() - started < TIMEOUT_S:
            rss = _tree_rss(process.pid)
            peak = max(peak, rss)
            _follow_stages(data / "artifacts", stages, rss, time.monotonic())
            time.sleep(POLL_S)
        if process.poll() is None:
            process.kill()
    if process.wait() != 0:
        print(f"  the command failed (exit status {process.returncode}); its last output:")
        print("\n".join("    " + line for line in log.read_text().splitlines()[-30:]))
        return None
    return {"peak": peak, "seconds": time.monotonic() - started,
            "stages": {stage: {"seconds": s["end"] - s["start"], "peak": s["peak"],
                               "rise": s["peak"] - s["before"]}
                       for stage, s in stages.items() if "end" in s}}


def _follow_stages(artifacts: Path, stages: dict, rss: int, now: float) -> None:
    """Note each stage's start and end, and the memory while it runs."""
    if not artifacts.is_dir():
        return
    for folder in artifacts.iterdir():
        stage = stages.get(folder.name)
        if stage is None and any(folder.glob(".tmp-*")):
            stages[folder.name] = stage = {"start": now, "before": rss, "peak": rss}
        if stage is None or "end" in stage:
            continue
        stage["peak"] = max(stage["peak"], rss)
        if any(folder.glob("*/manifest.json")):
            stage["end"] = now


def _tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            continue
        pid = int(status.parent.name)
        children.setdefault(int(fields["PPid"]), []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def build(shape: str, tokenizer_from: str, folder: Path) -> None:
    """Random weights of the shape, the tokenizer of `tokenizer_from`, saved to `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from tokprob.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_from)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024,
                        bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    scratch = folder.with_name(f".{folder.name}-partial")
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    scratch.rename(folder)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--build"] or len(sys.argv) != 5:
        sys.exit(__doc__)
    build(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
