"""The `tokprob` command line.

    tokprob run encoding [--model SPEC] [--dataset SPEC] [--max-tokens N] [--json]
    tokprob rerun STAGE [same options]      force one stage and what depends on it
    tokprob artifacts [--stage S] [--json]   what the artifact store holds

Errors in what the user asked for print one paragraph and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

from flows.stages import (
    DYNAMICS_CONFIGS,
    DYNAMICS_STAGES,
    ENCODING_CONFIGS,
    ENCODING_STAGES,
    PAPER_CONFIGS,
    PRUNING_CONFIGS,
    PRUNING_STAGES,
    STEERING_CONFIGS,
    STEERING_STAGES,
)
from tokprob.config import field_docs
from tokprob.errors import TokprobError
from tokprob.specs import DEFAULT_DATASET, DEFAULT_MODEL, DatasetSpec, ModelSpec
from tokprob.store import ArtifactStore
from tokprob.workspace import Workspace


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except TokprobError as error:
        print(textwrap.fill(f"tokprob: error: {error}", width=88), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tokprob: interrupted; finished stages are kept and reused next time.",
              file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokprob",
        description="How a causal LM encodes output token probabilities in its output "
                    "embeddings (arXiv 2406.01468).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run an analysis flow")
    flows = run.add_subparsers(dest="flow", required=True)
    encoding = flows.add_parser("encoding", help="α, E, the MLR of −log α on E, sparsity, PCA")
    _add_flow_arguments(encoding, ENCODING_CONFIGS)
    encoding.add_argument("--keep-hidden", action="store_true",
                          help="also store final hidden states of the held-out split")
    encoding.set_defaults(handler=_run_flow, refresh=[])
    steering = flows.add_parser("steering", help="steer α by editing output embeddings "
                                                 "(paper §3) and measure how precisely")
    _add_flow_arguments(steering, STEERING_CONFIGS)
    steering.set_defaults(handler=_run_flow, refresh=[])
    pruning = flows.add_parser("pruning", help="delete output-embedding dimensions by "
                                               "regression saliency (paper §4) and measure "
                                               "how far the outputs move")
    _add_flow_arguments(pruning, PRUNING_CONFIGS)
    _add_ood_argument(pruning)
    pruning.set_defaults(handler=_run_flow, refresh=[])
    dynamics = flows.add_parser("dynamics", help="frequency encoding and parameter "
                                                 "convergence across training checkpoints "
                                                 "(paper §5)")
    _add_flow_arguments(dynamics, DYNAMICS_CONFIGS, with_model=False)
    _add_dynamics_arguments(dynamics)
    dynamics.set_defaults(handler=_run_flow, refresh=[])
    paper = flows.add_parser("paper", help="the whole paper (encoding, steering, pruning, "
                                           "dynamics) for one or several models, compared")
    paper.add_argument("--models", type=lambda text: [m for m in text.split(",") if m],
                       default=[DEFAULT_MODEL],
                       help=f"comma-separated model specs (default: {DEFAULT_MODEL})")
    _add_flow_arguments(paper, PAPER_CONFIGS, with_model=False)
    _add_ood_argument(paper)
    _add_dynamics_arguments(paper)
    paper.add_argument("--with-dynamics", action=argparse.BooleanOptionalAction, default=True,
                       help="include the training dynamics (default: yes)")
    paper.set_defaults(handler=_run_flow, refresh=[])

    rerun = commands.add_parser("rerun", help="recompute one stage and what depends on it")
    rerun.add_argument("stage", choices=list(dict.fromkeys(
        ENCODING_STAGES + STEERING_STAGES + PRUNING_STAGES + DYNAMICS_STAGES)))
    _add_flow_arguments(rerun, ENCODING_CONFIGS | STEERING_CONFIGS | PRUNING_CONFIGS
                        | DYNAMICS_CONFIGS)
    _add_ood_argument(rerun)
    _add_dynamics_arguments(rerun)
    rerun.set_defaults(handler=_rerun, keep_hidden=False)

    steer = commands.add_parser(
        "steer", help="write a copy of a model whose output embeddings multiply the "
                      "probability of chosen tokens by chosen factors")
    steer.add_argument("--token", action="append", required=True, dest="tokens",
                       help="a token to steer: text that is exactly one token, or an id "
                            "(repeat with --ratio for several)")
    steer.add_argument("--ratio", action="append", required=True, type=float, dest="ratios",
                       help="the factor for the matching --token (2 doubles its probability)")
    steer.add_argument("--out", required=True, help="folder to write the steered model to")
    _add_flow_arguments(steer, STEERING_CONFIGS)
    steer.set_defaults(handler=_steer)

    prune = commands.add_parser(
        "prune", help="write a copy of a model with its least salient output-embedding "
                      "dimensions deleted")
    prune.add_argument("--fraction", type=float, required=True,
                       help="share of the dimensions to delete, in [0, 1)")
    prune.add_argument("--out", required=True, help="folder to write the pruned model to")
    # Writing the pruned model needs the regression, not the held-out hidden states.
    _add_flow_arguments(prune, {name: config for name, config in PRUNING_CONFIGS.items()
                                if name != "hidden_config"})
    prune.set_defaults(handler=_prune)

    pretrain = commands.add_parser(
        "pretrain", help="pre-train the built-in small GPT-2 on a corpus, keeping "
                         "log-spaced checkpoints (transformers folders)")
    _add_flow_arguments(pretrain, {"pretrain_config": DYNAMICS_CONFIGS["pretrain_config"]},
                        with_model=False)
    pretrain.set_defaults(handler=_pretrain, refresh=[])

    server = commands.add_parser(
        "server", help="start a Prefect server with its UI; tokprob commands run against it "
                       "while it is up")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    server.add_argument("--port", type=int, default=4200, help="port (default: 4200)")
    server.add_argument("--data-dir", help="workspace whose Prefect home holds the database")
    server.set_defaults(handler=_server)

    serve = commands.add_parser(
        "serve", help="serve deployments of the flows on schedules from a TOML file "
                      "(see flows/serve.py)")
    serve.add_argument("config", help="TOML file of [[deployment]] entries")
    serve.add_argument("--data-dir", help="artifact store the deployments use")
    serve.set_defaults(handler=_serve)

    report = commands.add_parser(
        "report", help="one HTML (and Markdown) file with every plot and table of a run, "
                       "or of the latest runs about a model")
    report.add_argument("query", metavar="RUN-OR-MODEL",
                        help="a flow run's name or id, or a model (its name or spec)")
    _add_common(report)
    report.set_defaults(handler=_report)

    artifacts = commands.add_parser("artifacts", help="list the cached artifacts")
    artifacts.add_argument("--stage", help="only this stage")
    _add_common(artifacts)
    artifacts.set_defaults(handler=_list_artifacts)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="artifact store (default: $TOKPROB_DATA or ./data)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _add_ood_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ood-dataset", default="shakespeare",
                        help="out-of-distribution corpus for pruning (default: shakespeare)")


def _add_dynamics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", type=lambda text: [c for c in text.split(",") if c],
                        default=[], help="comma-separated checkpoints (hub id@revision or "
                        "folders), oldest first; none: pre-train the built-in model")
    parser.add_argument("--alpha", action=argparse.BooleanOptionalAction, default=True,
                        help="also regress −log α of each checkpoint (on --dataset's "
                             "detecting split) (default: yes)")
    parser.add_argument("--tokens-per-step", type=float, default=None,
                        help="tokens per training step of the given checkpoints, for the "
                             "tokens-seen axis (e.g. 2097152 for Pythia)")


def _add_flow_arguments(parser: argparse.ArgumentParser, configs: dict[str, type],
                        with_model: bool = True) -> None:
    if with_model:
        parser.add_argument("--model", default=DEFAULT_MODEL,
                            help="built-in name, hub id[@revision], model folder or .gguf "
                                 f"file (default: {DEFAULT_MODEL})")
    parser.add_argument("--dataset", default=DEFAULT_DATASET,
                        help="built-in name (wiki-leads, shakespeare), .txt/.json/.jsonl/"
                             ".parquet files, or hub name[:config][@revision] "
                             f"(default: {DEFAULT_DATASET})")
    parser.add_argument("--split", default="train", help="split of a hub dataset")
    parser.add_argument("--text-column", default="text", help="column holding the text")
    for config in configs.values():
        add_config_arguments(parser, config)
    parser.set_defaults(configs=configs)
    _add_common(parser)


def add_config_arguments(parser: argparse.ArgumentParser, config: type) -> None:
    """One --option per field of a config dataclass, documented by the field's docstring."""
    docs = field_docs(config)
    hints = typing.get_type_hints(config)
    for field in dataclasses.fields(config):
        hint = hints[field.name]
        options: dict[str, Any] = {"default": field.default, "help": docs.get(field.name, "")}
        origin, members = typing.get_origin(hint), typing.get_args(hint)
        if origin is typing.Literal:
            options["choices"] = list(members)
        elif hint is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif origin is tuple and members[0] is str:
            options.update(action="append", default=None)  # repeat the option
        elif origin is tuple:
            options["type"] = _comma_separated(members[0])
        else:
            options["type"] = hint
        if field.default not in ((), None):
            shown = ",".join(map(str, field.default)) if origin is tuple else field.default
            options["help"] += f" (default: {shown})"
        parser.add_argument("--" + field.name.replace("_", "-"), **options)


def _comma_separated(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} "
                                             f"values, got {text!r}") from None
    return parse


def config_from_arguments(config: type, args: argparse.Namespace) -> Any:
    values = {}
    for field in dataclasses.fields(config):
        value = getattr(args, field.name)
        values[field.name] = tuple(value or ()) if isinstance(field.default, tuple) else value
    return config(**values)


def prepare_environment(workspace: Workspace) -> None:
    """Settings that must be in place before Prefect is imported.

    Without PREFECT_API_URL, a server started by `tokprob server` for this workspace is
    used when it answers; otherwise each command starts a temporary one.
    """
    os.environ.setdefault("PREFECT_HOME", str(workspace.prefect_home))
    home = Path(os.environ["PREFECT_HOME"]).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tokprob")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "PREFECT_API_URL" not in os.environ and (url := running_server(home)):
        os.environ["PREFECT_API_URL"] = url


SERVER_RECORD = "tokprob-server.json"


def running_server(prefect_home: Path) -> str | None:
    """The API address of the `tokprob server` of this Prefect home, if it answers."""
    import urllib.request

    record = prefect_home / SERVER_RECORD
    if not record.is_file():
        return None
    url = json.loads(record.read_text())["api_url"]
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return url if answer.status == 200 else None
    except OSError:
        return None


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


def _run_flow(args: argparse.Namespace) -> int:
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
    _configure_logging()
    result = chosen(**inputs)
    print(json.dumps(result, indent=2, default=str) if args.json else describe(result))
    return 0


def _rerun(args: argparse.Namespace) -> int:
    args.refresh = [args.stage]
    flows = {"steering": STEERING_STAGES, "pruning": PRUNING_STAGES,
             "dynamics": DYNAMICS_STAGES}
    args.flow = next((flow for flow, stages in flows.items()
                      if args.stage in set(stages) - set(ENCODING_STAGES)), "encoding")
    args.configs = {"encoding": ENCODING_CONFIGS, "steering": STEERING_CONFIGS,
                    "pruning": PRUNING_CONFIGS, "dynamics": DYNAMICS_CONFIGS}[args.flow]
    return _run_flow(args)


def _pretrain(args: argparse.Namespace) -> int:
    inputs = _flow_inputs(args)
    from flows.dynamics import pretraining

    _configure_logging()
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


def _prune(args: argparse.Namespace) -> int:
    inputs = _flow_inputs(args)
    from flows.pruning import prune

    _configure_logging()
    result = prune(fraction=args.fraction, out=args.out, **inputs)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"wrote the pruned model to {result['out']}: {len(result['deleted_dimensions'])} "
          f"of {result['hidden_size']} output-embedding dimensions deleted by "
          f"{result['saliency']}-saliency (listed in {result['out']}/tokprob-pruning.json)")
    return 0


def _steer(args: argparse.Namespace) -> int:
    inputs = _flow_inputs(args)
    from flows.steering import steer

    _configure_logging()
    result = steer(tokens=args.tokens, ratios=args.ratios, out=args.out, **inputs)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"wrote the steered model to {result['out']} (Ω = {result['omega']}, "
          f"{result['omega_dims']} dimensions)")
    for edit in result["edits"]:
        print(f"  {edit['token']!r} (id {edit['token_id']}): × {edit['ratio']:g} requested, "
              f"× {edit['predicted_ratio_heldout']:.3f} on held-out text")
    return 0


def _server(args: argparse.Namespace) -> int:
    """Run `prefect server start` in the foreground, with this workspace's Prefect home
    (SQLite database), analytics off, and a record that lets other commands find it."""
    import subprocess

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
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0
    finally:
        record.unlink(missing_ok=True)


def _serve(args: argparse.Namespace) -> int:
    from flows.serve import read_deployments

    workspace = Workspace.from_env(args.data_dir)
    workspace.ensure_writable()
    deployments = read_deployments(Path(args.config))
    prepare_environment(workspace)
    if "PREFECT_API_URL" not in os.environ:
        print("tokprob: no Prefect server found; serving on a temporary one (start "
              "`tokprob server` first to watch the runs in the UI)", file=sys.stderr)
    from flows.serve import serve_deployments

    _configure_logging()
    serve_deployments(deployments, workspace.data_dir)
    return 0


def _report(args: argparse.Namespace) -> int:
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


def _list_artifacts(args: argparse.Namespace) -> int:
    workspace = Workspace.from_env(args.data_dir)
    rows = []
    for manifest in ArtifactStore(workspace.artifacts).manifests():
        if args.stage and manifest.stage != args.stage:
            continue
        rows.append({
            "stage": manifest.stage, "key": manifest.key,
            "size": sum(entry.size for entry in manifest.files.values()),
            "created": manifest.created, "parameters": manifest.params,
            "path": str(workspace.artifacts / manifest.stage / manifest.key),
        })
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"no artifacts in {workspace.artifacts}")
        return 0
    print(f"{'stage':<14}{'key':<22}{'size':>10}  {'created':<26}parameters")
    for row in rows:
        params = json.dumps(row["parameters"], separators=(",", ":"), default=str)
        print(f"{row['stage']:<14}{row['key']:<22}{_size(row['size']):>10}  "
              f"{row['created']:<26}{params}")
    return 0


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


class _DropExpectedTracebacks(logging.Filter):
    """Prefect logs a failed task with its traceback; for a TokprobError the message alone
    says everything, and the command prints it once more at the end."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TokprobError):
            record.exc_info = None
            record.exc_text = None
        return True


def _configure_logging() -> None:
    """tokprob's own progress lines at INFO (Prefect forwards them to the run's log);
    TokprobErrors without tracebacks. Called once the flow module is imported: Prefect
    has set up its log handlers by then."""
    logging.getLogger("tokprob").setLevel(logging.INFO)
    for name in ("prefect", "prefect.task_runs", "prefect.flow_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_DropExpectedTracebacks())
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropExpectedTracebacks())


if __name__ == "__main__":
    sys.exit(main())
