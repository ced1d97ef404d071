"""What each `tokprob` command does, once its arguments are parsed (see flows/cli.py)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from flows.environment import SERVER_RECORD, configure_logging, prepare_environment
from flows.stages import (
    DYNAMICS_CONFIGS,
    DYNAMICS_STAGES,
    ENCODING_CONFIGS,
    ENCODING_STAGES,
    PRUNING_CONFIGS,
    PRUNING_STAGES,
    STEERING_CONFIGS,
    STEERING_STAGES,
)
from tokprob.dynamics import check_checkpoint_count
from tokprob.errors import TokprobError
from tokprob.models import new_model_folder
from tokprob.pruning import check_fractions, check_regression_target
from tokprob.specs import DatasetSpec, ModelSpec
from tokprob.steering import check_edits
from tokprob.store import ArtifactStore
from tokprob.workspace import Workspace


def config_from_arguments(config: type, args: argparse.Namespace) -> Any:
    values = {}
    for field in dataclasses.fields(config):
        value = getattr(args, field.name)
        values[field.name] = tuple(value or ()) if isinstance(field.default, tuple) else value
    return config(**values)


def _flow_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The flow's keyword arguments, checked before Prefect starts (a typo fails in
    milliseconds, not after the engine's start-up)."""
    workspace = Workspace.from_env(args.data_dir)
    workspace.ensure_writable()
    DatasetSpec.parse(args.dataset, args.split, args.text_column)
    inputs = {name: config_from_arguments(cls, args) for name, cls in args.configs.items()}
    inputs |= {"dataset": args.dataset, "split": args.split, "text_column": args.text_column,
               "data_dir": workspace.data_dir}
    if hasattr(args, "model"):
        ModelSpec.parse(args.model)
        inputs["model"] = args.model
    prepare_environment(workspace)
    return inputs


def run_flow(args: argparse.Namespace) -> int:
    if getattr(args, "checkpoints", None):  # none: the built-in pre-training run
        check_checkpoint_count(len(args.checkpoints))
    inputs = _flow_inputs(args) | {"refresh": args.refresh}
    if args.flow == "encoding":
        from flows.encoding import encoding as chosen
        from tokprob.summary import encoding_text as describe

        inputs["keep_hidden"] = args.keep_hidden
    elif args.flow == "steering":
        from flows.steering import steering as chosen
        from tokprob.summary import steering_text as describe
    elif args.flow == "pruning":
        from flows.pruning import pruning as chosen
        from tokprob.summary import pruning_text as describe

        DatasetSpec.parse(args.ood_dataset)
        check_regression_target(args.target)
        inputs["ood_dataset"] = args.ood_dataset
    elif args.flow == "paper":
        from flows.paper import paper as chosen
        from tokprob.summary import paper_text as describe

        for spec in args.models + args.checkpoints:
            ModelSpec.parse(spec)
        DatasetSpec.parse(args.ood_dataset)
        inputs |= {"models": args.models, "ood_dataset": args.ood_dataset,
                   "with_dynamics": args.with_dynamics, "checkpoints": args.checkpoints}
    else:
        from flows.dynamics import dynamics as chosen
        from tokprob.summary import dynamics_text as describe

        for spec in args.checkpoints:
            ModelSpec.parse(spec)
        inputs.pop("model", None)  # `rerun` offers --model for the other flows
        inputs |= {"checkpoints": args.checkpoints, "alpha": args.alpha,
                   "tokens_per_step": args.tokens_per_step}
    configure_logging()
    result = chosen(**inputs)
    print(json.dumps(result, indent=2, default=str) if args.json else describe(result))
    return 0


def rerun(args: argparse.Namespace) -> int:
    args.refresh = [args.stage]
    flows = {"steering": STEERING_STAGES, "pruning": PRUNING_STAGES,
             "dynamics": DYNAMICS_STAGES}
    args.flow = next((flow for flow, stages in flows.items()
                      if args.stage in set(stages) - set(ENCODING_STAGES)), "encoding")
    args.configs = {"encoding": ENCODING_CONFIGS, "steering": STEERING_CONFIGS,
                    "pruning": PRUNING_CONFIGS, "dynamics": DYNAMICS_CONFIGS}[args.flow]
    return run_flow(args)


def pretrain(args: argparse.Namespace) -> int:
    inputs = _flow_inputs(args)
    from flows.dynamics import pretraining

    configure_logging()
    result = pretraining(refresh=args.refresh, **inputs)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"pre-trained on {result['dataset']}: {len(result['checkpoints'])} checkpoints in "
          f"{result['artifact']}/checkpoints")
    for checkpoint in result["checkpoints"]:
        print(f"  step {checkpoint['step']:>6}  loss {checkpoint['loss']:.3f}  "
              f"{checkpoint['path']}")
    return 0


def prune(args: argparse.Namespace) -> int:
    check_fractions((args.fraction,))
    if args.greedy and not args.compensate:
        raise TokprobError("--greedy chooses the dimensions for compensated pruning; give "
                           "--compensate with it.")
    method = ("compensated-greedy" if args.greedy else "compensated") if args.compensate \
        else "saliency"
    check_regression_target(args.target)
    new_model_folder(args.out)
    inputs = _flow_inputs(args)
    from flows.pruning import prune

    configure_logging()
    result = prune(fraction=args.fraction, out=args.out, method=method, **inputs)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    chosen = {"saliency": f"by {result['saliency']}-saliency",
              "compensated": f"by {result['saliency']}-saliency, compensated",
              "compensated-greedy": "in the compensated greedy order, compensated"}[method]
    print(f"wrote the pruned model to {result['out']}: {len(result['deleted_dimensions'])} "
          f"of {result['hidden_size']} output-embedding dimensions deleted {chosen} "
          f"(listed in {result['out']}/tokprob-pruning.json)")
    return 0


def steer(args: argparse.Namespace) -> int:
    check_edits(args.tokens, args.edit_ratios)
    new_model_folder(args.out)
    inputs = _flow_inputs(args)
    from flows.steering import steer

    configure_logging()
    result = steer(tokens=args.tokens, ratios=args.edit_ratios, out=args.out, **inputs)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"wrote the steered model to {result['out']} (Ω = {result['omega']}, "
          f"{result['omega_dims']} dimensions)")
    for edit in result["edits"]:
        print(f"  {edit['token']!r} (id {edit['token_id']}): × {edit['ratio']:g} requested, "
              f"× {edit['predicted_ratio_heldout']:.3f} on held-out text")
    return 0


def server(args: argparse.Namespace) -> int:
    """Run `prefect server start` in the foreground, with this workspace's Prefect home
    (SQLite database), analytics off, and a record that lets other commands find it."""
    workspace = Workspace.from_env(args.data_dir)
    workspace.ensure_writable()
    prepare_environment(workspace)
    os.environ.pop("PREFECT_API_URL", None)  # the server must not talk to another one
    home = Path(os.environ["PREFECT_HOME"]).expanduser()
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    ui = f"http://{shown}:{args.port}"
    record = home / SERVER_RECORD
    record.write_text(json.dumps({"api_url": f"{ui}/api", "ui_url": ui, "pid": os.getpid()}))
    print(f"Prefect UI: {ui}\n"
          f"tokprob commands with this data folder run against it while it is up; other "
          f"Prefect clients: export PREFECT_API_URL={ui}/api\n"
          f"database and settings: {home}\nstop with Ctrl-C", flush=True)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", args.host,
               "--port", str(args.port)]
    # The UI asks its browser to call this address; by default it would name port 4200.
    env = os.environ | {"PREFECT_UI_API_URL": f"{ui}/api",
                        "PREFECT_SERVER_API_HOST": args.host,
                        "PREFECT_SERVER_API_PORT": str(args.port)}
    # The server runs in a process group of its own, so that stopping this command, by
    # Ctrl-C or by SIGTERM (kill, a service manager), stops the server and its workers too.
    process = subprocess.Popen(command, env=env, start_new_session=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return process.wait()
    except KeyboardInterrupt:
        _stop_group(process)
        return 0
    finally:
        record.unlink(missing_ok=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_group(process: subprocess.Popen) -> None:
    """SIGINT to the server's process group (Prefect shuts down cleanly); after 30 s, or
    once it has, SIGKILL for whatever of the group is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def serve(args: argparse.Namespace) -> int:
    from flows.serve import read_deployments

    workspace = Workspace.from_env(args.data_dir)
    workspace.ensure_writable()
    deployments = read_deployments(Path(args.config))
    prepare_environment(workspace)
    if "PREFECT_API_URL" not in os.environ:
        print("tokprob: no Prefect server found; serving on a temporary one (start "
              "`tokprob server` first to watch the runs in the UI)", file=sys.stderr)
    from flows.serve import serve_deployments

    configure_logging()
    serve_deployments(deployments, workspace.data_dir)
    return 0


def report(args: argparse.Namespace) -> int:
    workspace = Workspace.from_env(args.data_dir)
    prepare_environment(workspace)
    from tasks.runs import find_runs, write_report

    records = find_runs(workspace, args.query)
    html_path, md_path = write_report(workspace, records, args.query)
    runs = [f"{r['flow']} ({r['flow_run_name']}, {r['created']})" for r in records]
    if args.json:
        print(json.dumps({"html": str(html_path), "markdown": str(md_path), "runs": runs}))
    else:
        print(f"report of {', '.join(runs)}:\n  {html_path}\n  {md_path}")
    return 0


def list_artifacts(args: argparse.Namespace) -> int:
    workspace = Workspace.from_env(args.data_dir)
    rows = []
    for manifest in ArtifactStore(workspace.artifacts).manifests():
        if args.stage and manifest.stage != args.stage:
            continue
        rows.append({
            "stage": manifest.stage, "key": manifest.key,
            "size": sum(entry.size for entry in manifest.files.values()),
            "created": manifest.created, "model": manifest.summary.get("subject", ""),
            "dataset": manifest.summary.get("dataset_name", ""), "parameters": manifest.params,
            "path": str(workspace.artifacts / manifest.stage / manifest.key),
        })
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"no {args.stage + ' ' if args.stage else ''}artifacts in {workspace.artifacts}")
        return 0
    table = [{"stage": row["stage"], "key": row["key"], "size": _size(row["size"]),
              "created": str(row["created"])[:19], "model": row["model"] or "–",
              "dataset": row["dataset"] or "–",
              "parameters": json.dumps(row["parameters"], separators=(",", ":"), default=str)}
             for row in rows]
    widths = {column: max(len(column), *(len(row[column]) for row in table))
              for column in table[0] if column != "parameters"}
    print("  ".join(column.ljust(width) for column, width in widths.items()) + "  parameters")
    for row in table:
        print("  ".join(row[column].rjust(width) if column == "size" else
                        row[column].ljust(width) for column, width in widths.items())
              + "  " + row["parameters"])
    return 0


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


