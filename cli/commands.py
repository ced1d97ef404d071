"""What each `tokprob` command does, once its arguments are parsed (see cli/main.py)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

from cli.environment import (
    SERVER_RECORD,
    check_database,
    configure_logging,
    on_temporary_server,
    prepare_environment,
    running_server,
    settings_follow_environment,
    stop_group,
    stop_leftover_servers,
    wait_until_up,
)
from flows.parameters import flow_inputs
from flows.stages import FLOWS
from tokprob.dynamics import check_checkpoint_count, checkpoint_steps
from tokprob.errors import TokprobError
from tokprob.model_export import new_model_folder
from tokprob.models import check_window_fits, model_config
from tokprob.pruning import check_fractions, check_regression_target
from tokprob.resampling import INTERVAL
from tokprob.specs import DEFAULT_MODEL, DatasetSpec, ModelSpec
from tokprob.steering import STEER_TOLERANCE, check_edits
from tokprob.store import ArtifactStore
from tokprob.workspace import Workspace


def _flow_inputs(args: argparse.Namespace, flow: str) -> dict[str, Any]:
    """The flow's keyword arguments from its options, checked before Prefect starts (a
    typo fails in milliseconds, not after the engine's start-up)."""
    workspace = Workspace.from_env(args.data_dir)
    workspace.ensure_writable()
    given = {}
    for parameter in args.parameters:
        value = getattr(args, parameter.name, None)
        if parameter.group is None and value is not None:  # None: the default stands
            given[parameter.name] = (tuple(value) if isinstance(parameter.default, tuple)
                                     else value)
    inputs = flow_inputs(flow, args.parameters, given)
    if corpus := inputs.get("corpus"):
        corpus.spec()
    if "model" in inputs:
        check_local_model(ModelSpec.parse(inputs["model"]), getattr(args, "window", None))
    prepare_environment(workspace)
    return inputs | {"data_dir": workspace.data_dir}


def check_local_model(spec: ModelSpec, window: int | None) -> None:
    """A model folder's config.json, read in milliseconds: valid, of a known architecture,
    and with room for the windows asked for (none: the model reads no windows)."""
    if spec.kind == "local":
        config = model_config(spec.location)
        if window is not None:
            check_window_fits(config, window, spec.location)


def run_flow(args: argparse.Namespace) -> int:
    chosen = FLOWS[args.flow]
    _check_flow_options(args)
    inputs = _flow_inputs(args, chosen.name)  # with `refresh`, which rerun sets
    flow = chosen.load()
    configure_logging()
    result = flow(**inputs)
    print(json.dumps(result, indent=2, default=str) if args.json else chosen.describe(result))
    return 0


def _check_flow_options(args: argparse.Namespace) -> None:
    """What a flow's own options name, checked before Prefect starts."""
    checkpoints = getattr(args, "checkpoints", None) or []
    if checkpoints:  # none: the built-in pre-training run
        check_checkpoint_count(len(checkpoints))
        checkpoint_steps(checkpoints)
    if args.flow in ("pruning", "paper"):
        DatasetSpec.parse(args.ood_dataset)
    if args.flow == "pruning":
        check_regression_target(args.target)
    if args.flow == "paper":
        for spec in args.models or [DEFAULT_MODEL]:
            check_local_model(ModelSpec.parse(spec), args.window)
    if args.flow in ("dynamics", "paper"):
        # A checkpoint's windows are read only for its α, and with the paper only with
        # the dynamics.
        reads_windows = args.alpha and (args.flow == "dynamics" or args.with_dynamics)
        for spec in checkpoints:
            check_local_model(ModelSpec.parse(spec), args.window if reads_windows else None)


def rerun(args: argparse.Namespace) -> int:
    args.refresh = [args.stage]
    # The flow that has the stage: encoding's own, else the one analysis that adds it.
    encoding = FLOWS["encoding"]
    args.flow = next((name for name in ("steering", "pruning", "dynamics")
                      if args.stage in set(FLOWS[name].stages) - set(encoding.stages)),
                     encoding.name)
    # Only the options of that flow: one of another flow's would do nothing.
    own = {parameter.name for parameter in FLOWS[args.flow].parameters()}
    foreign = sorted("--" + parameter.name.replace("_", "-") for parameter in args.parameters
                     if parameter.name not in own and parameter.group is None
                     and getattr(args, parameter.name, None) not in (None, parameter.default))
    if foreign:
        raise TokprobError(f"The stage {args.stage} belongs to the {args.flow} flow, which "
                           f"takes no {', '.join(foreign)}; leave "
                           f"{'it' if len(foreign) == 1 else 'them'} out.")
    args.parameters = FLOWS[args.flow].parameters()
    return run_flow(args)


def pretrain(args: argparse.Namespace) -> int:
    inputs = _flow_inputs(args, "pretraining")
    from flows.dynamics import pretraining

    configure_logging()
    result = pretraining(**inputs)
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
    inputs = _flow_inputs(args, "prune")
    from flows.pruning import prune

    configure_logging()
    result = prune(method=method, **inputs)
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
    _check_tokens(args.tokens, ModelSpec.parse(args.model), Workspace.from_env(args.data_dir))
    inputs = _flow_inputs(args, "steer")
    from flows.steering import steer

    configure_logging()
    result = steer(**inputs)  # --token and --ratio give `tokens` and `edit_ratios`
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    how = (f"Ω = {result['omega']}, {result['omega_dims']} dimensions"
           if result["method"] == "closed_form" else
           f"calibrated jointly on {result['detect_positions']:,} detecting positions")
    print(f"wrote the steered model to {result['out']} ({how})")
    for edit in result["edits"]:
        low, high = edit["predicted_ratio_heldout_interval"]
        about = [f"{INTERVAL:.0%} over resampled held-out windows: {low:.3f} to {high:.3f}"]
        if "detect_effective_positions" in edit:
            about.append(f"calibrated on about {edit['detect_effective_positions']:.0f} "
                         "positions where it is probable, measured on about "
                         f"{edit['heldout_effective_positions']:.0f}")
        print(f"  {edit['token']!r} (id {edit['token_id']}): × {edit['ratio']:g} requested, "
              f"× {edit['predicted_ratio_heldout']:.3f} on held-out text ({'; '.join(about)})")
    missed = [e for e in result["edits"] if e["heldout_log_error"] > STEER_TOLERANCE]
    if missed:
        note = (f"note: {_names(missed)} missed the requested ratio on held-out text by "
                f"more than {STEER_TOLERANCE:g} in log. {_why_missed(result['method'])}")
        within = [e for e in missed if _within(e["ratio"], e["predicted_ratio_heldout_interval"])]
        if within:
            note += (f" The ratio requested of {_names(within)} lies within the interval of "
                     "its held-out ratio: those positions do not tell the miss from chance.")
        print(textwrap.fill(note, width=88, break_on_hyphens=False))
    return 0


def _names(edits: list[dict]) -> str:
    return ", ".join(repr(edit["token"]) for edit in edits)


def _within(value: float, interval: list[float]) -> bool:
    return interval[0] <= value <= interval[1]


def _why_missed(method: str) -> str:
    if method == "closed_form":
        return ("The closed-form edit is right only on average over positions; "
                "--method calibrated solves each step on the detecting split.")
    return ("A calibrated edit lands on held-out text only as well as the detecting "
            "positions where the token is probable resemble other text, and a ratio "
            "measured on a few held-out positions is itself uncertain; with few of "
            "them (under about 10), raise --heldout-tokens (it sets how many positions "
            "of each split are read).")


def _check_tokens(tokens: list[str], spec: ModelSpec, workspace: Workspace) -> None:
    """Each token to steer is one token of the model's tokenizer: found out now, not
    after the stages that steering needs."""
    from tokprob.model_sources import resolve_model
    from tokprob.models import load_tokenizer
    from tokprob.steering import resolve_targets

    source = resolve_model(spec, workspace)
    tokenizer = load_tokenizer(source.path)
    rows = model_config(source.path).get("vocab_size") or len(tokenizer)
    resolve_targets(tuple(tokens), tokenizer, int(rows))


def server(args: argparse.Namespace) -> int:
    """Run `prefect server start` in the foreground, with this workspace's Prefect home
    (SQLite database), analytics off, and a record that lets other commands find it."""
    workspace = Workspace.from_env(args.data_dir)
    workspace.ensure_writable()
    # The server keeps its database in this data folder, whatever the user's profile says.
    os.environ.setdefault("PREFECT_HOME", str(workspace.prefect_home))
    prepare_environment(workspace, temporary_server=False)
    os.environ.pop("PREFECT_API_URL", None)  # the server must not talk to another one
    home = Path(os.environ["PREFECT_HOME"]).expanduser()
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    ui = f"http://{shown}:{args.port}"
    if running := running_server(home):
        raise TokprobError(f"A tokprob server for this data folder already runs at "
                           f"{running.removesuffix('/api')}; tokprob commands use it. "
                           "Stop it first to start another.")
    _check_port_free(args.host, args.port)
    check_database(home)
    from cli.reports_server import start_reports_server

    reports, reports_url = start_reports_server(workspace.root, args.host, args.port + 1)
    record = home / SERVER_RECORD
    record.write_text(json.dumps({"api_url": f"{ui}/api", "ui_url": ui, "pid": os.getpid(),
                                  "reports_url": reports_url}))
    print(f"Prefect UI: {ui}\n"
          f"tokprob commands with this data folder run against it while it is up; other "
          f"Prefect clients: export PREFECT_API_URL={ui}/api\n"
          f"reports: {reports_url}/reports/ (linked from each flow run)\n"
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
    threading.Thread(target=_limit_model_loading, args=(f"{ui}/api", process), daemon=True,
                     name="tokprob-concurrency").start()
    try:
        return process.wait()
    except KeyboardInterrupt:
        # Gone now for other commands, even if the exit timer (cli/main.py) ends this
        # process before the server has stopped.
        record.unlink(missing_ok=True)
        # SIGINT: Prefect's server shuts down cleanly; SIGKILL after 30 s if need be.
        stop_group(process.pid, grace=30, first=signal.SIGINT)
        process.wait()
        return 0
    finally:
        record.unlink(missing_ok=True)
        reports.shutdown()


def _limit_model_loading(api_url: str, process: subprocess.Popen) -> None:
    """Once the server answers, a concurrency limit of 1 on the stages that load a model,
    so that two scheduled runs never hold two models in this machine's memory at once."""
    from cli.serve import limit_model_loading

    if wait_until_up(process, api_url, timeout=300):
        limit_model_loading(api_url)


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port already taken before printing anything: the server would fail after
    its banner, and its record would mislead later commands."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind((host, port))
        except OSError as error:
            raise TokprobError(
                f"Cannot listen on {host}:{port}: {error.strerror or error} (another "
                "server, tokprob's or not, uses the port). Stop it, or choose another "
                "port with --port.") from None


def doctor(args: argparse.Namespace) -> int:
    """Clear what killed commands leave behind: stale stage locks, temporary Prefect
    servers still running, a damaged Prefect database (moved aside)."""
    workspace = Workspace.from_env(args.data_dir)
    home = Path(os.environ.get("PREFECT_HOME") or workspace.prefect_home).expanduser()
    stopped = stop_leftover_servers(home)
    check_database(home)
    from tasks.locks import LiveHolderLockManager

    locks = LiveHolderLockManager(workspace.root / "locks").locks()
    for lock in locks:
        if lock["stale"]:
            Path(lock["path"]).unlink(missing_ok=True)
    if args.json:
        print(json.dumps({"locks": locks, "stopped_servers": stopped}, indent=2))
        return 0
    stale = sum(lock["stale"] for lock in locks)
    print(f"{len(locks)} stage lock(s) in {workspace.root / 'locks'}: {stale} stale, cleared; "
          f"{len(locks) - stale} held by running commands")
    for lock in locks:
        state = "stale, cleared" if lock["stale"] else "held"
        print(f"  {lock['key']}  {lock['holder']} ({state})")
    print(f"{len(stopped)} temporary Prefect server(s) left by killed commands, stopped"
          + "".join(f"\n  {url}" for url in stopped))
    return 0


def serve(args: argparse.Namespace) -> int:
    from cli.serve import read_deployments

    workspace = Workspace.from_env(args.data_dir)
    workspace.ensure_writable()
    deployments = read_deployments(Path(args.prefect_file))
    prepare_environment(workspace, scheduling=True)
    settings_follow_environment()  # read_deployments imported Prefect
    if on_temporary_server():
        print("tokprob: no Prefect server found; serving on a temporary one, stopped with "
              "this command (start `tokprob server` first to watch the runs in the UI)",
              file=sys.stderr)
    from cli.serve import serve_deployments

    serve_deployments(deployments, workspace.data_dir)
    return 0


def report(args: argparse.Namespace) -> int:
    workspace = Workspace.from_env(args.data_dir)
    workspace.ensure_writable()  # the report is written into it
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


