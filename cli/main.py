"""The `tokprob` command line: its arguments, built from the config dataclasses.

    tokprob run encoding|steering|pruning|dynamics|paper [options] [--json]
    tokprob steer | prune | pretrain | rerun STAGE | artifacts | report | server | serve
    tokprob doctor

`tokprob COMMAND --help` documents each; cli/commands.py holds what they do. Errors in
what the user asked for print one paragraph and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import sys
import textwrap
import threading
import types
import typing
from typing import Any

from cli import commands as handlers
from cli.environment import stop_temporary_server
from flows.stages import (
    DYNAMICS_CONFIGS,
    DYNAMICS_STAGES,
    ENCODING_CONFIGS,
    ENCODING_STAGES,
    PAPER_CONFIGS,
    PAPER_STAGES,
    PARAMETER_DOCS,
    PRUNING_CONFIGS,
    PRUNING_STAGES,
    STEERING_CONFIGS,
    STEERING_STAGES,
)
from tokprob.config import field_docs
from tokprob.errors import TokprobError
from tokprob.specs import DEFAULT_DATASET, DEFAULT_MODEL

QUOTED = re.compile(r"(?<=[(\s,])'[^'\n]{1,40}'(?=[,)\s.:])")
"""Short quoted strings such as tokens (' Paris'), whose spaces a line must not break."""


def paragraph(text: str, width: int = 88) -> str:
    """An error message wrapped to the terminal, never inside a quoted token."""
    kept = QUOTED.sub(lambda match: match.group().replace(" ", "\u00a0"), text)
    return textwrap.fill(kept, width=width).replace("\u00a0", " ")


class Parser(argparse.ArgumentParser):
    """Usage mistakes in one paragraph, like every other error, pointing at --help."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, paragraph(f"{self.prog}: error: {message}. `{self.prog} --help` lists "
                               "the options.") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM (kill, a service manager) stops a command the way Ctrl-C does.
    previous = {number: signal.signal(number, _interrupt)
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        return args.handler(args)
    except BrokenPipeError:  # `tokprob artifacts | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return 0
    except TokprobError as error:
        print(paragraph(f"tokprob: error: {error}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _say_interrupted()
        return INTERRUPTED
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        stop_temporary_server()


INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT)."""


EXIT_GRACE_SECONDS = 5.0
"""How long an interrupted command may take to unwind before it exits regardless."""

INTERRUPTED_MESSAGE = "tokprob: interrupted; finished stages are kept and reused next time."


def _interrupt(signum: int, frame: Any) -> None:
    # Library code between here and `main` may catch the KeyboardInterrupt (Prefect
    # turns BaseExceptions in its engines into crashes, and background threads can hold
    # the process at exit): a timer makes sure the command ends within seconds anyway.
    # Finished artifacts are already in place; unfinished ones are temporary folders.
    if not _exit_timer.is_alive():
        _exit_timer.start()
    raise KeyboardInterrupt


def _say_interrupted() -> None:
    if not _said.is_set():
        _said.set()
        print(INTERRUPTED_MESSAGE, file=sys.stderr, flush=True)


def _exit_regardless() -> None:
    _say_interrupted()
    with contextlib.suppress(Exception):  # the main thread may be stopping it too
        stop_temporary_server()
    sys.stdout.flush()
    os._exit(INTERRUPTED)


_exit_timer = threading.Timer(EXIT_GRACE_SECONDS, _exit_regardless)
_exit_timer.daemon = True
_said = threading.Event()


def run() -> typing.NoReturn:
    """The console entry point. An interrupted command exits at once: a stage computing
    in a worker thread would otherwise hold the process until it finished, and the
    artifacts it leaves half-written are temporary folders the next run removes."""
    status = main()
    if status == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
                          help=PARAMETER_DOCS["keep_hidden"])
    encoding.set_defaults(handler=handlers.run_flow, refresh=[])
    steering = flows.add_parser("steering", help="steer α by editing output embeddings "
                                                 "(paper §3) and measure how precisely")
    _add_flow_arguments(steering, STEERING_CONFIGS)
    steering.set_defaults(handler=handlers.run_flow, refresh=[])
    pruning = flows.add_parser("pruning", help="delete output-embedding dimensions by "
                                               "regression saliency (paper §4) and measure "
                                               "how far the outputs move")
    _add_flow_arguments(pruning, PRUNING_CONFIGS)
    _add_ood_argument(pruning)
    pruning.set_defaults(handler=handlers.run_flow, refresh=[])
    dynamics = flows.add_parser("dynamics", help="frequency encoding and parameter "
                                                 "convergence across training checkpoints "
                                                 "(paper §5)")
    _add_flow_arguments(dynamics, DYNAMICS_CONFIGS, with_model=False)
    _add_dynamics_arguments(dynamics)
    dynamics.set_defaults(handler=handlers.run_flow, refresh=[])
    paper = flows.add_parser("paper", help="the whole paper (encoding, steering, pruning, "
                                           "dynamics) for one or several models, compared")
    paper.add_argument("--models", type=lambda text: [m for m in text.split(",") if m],
                       default=[DEFAULT_MODEL],
                       help=f"{PARAMETER_DOCS['models']} (default: {DEFAULT_MODEL})")
    _add_flow_arguments(paper, PAPER_CONFIGS, with_model=False)
    _add_ood_argument(paper)
    _add_dynamics_arguments(paper)
    paper.add_argument("--with-dynamics", action=argparse.BooleanOptionalAction, default=True,
                       help=f"{PARAMETER_DOCS['with_dynamics']} (default: yes)")
    paper.set_defaults(handler=handlers.run_flow, refresh=[])

    rerun = commands.add_parser("rerun", help="recompute one stage and what depends on it")
    rerun.add_argument("stage", choices=list(dict.fromkeys(
        ENCODING_STAGES + STEERING_STAGES + PRUNING_STAGES + DYNAMICS_STAGES)))
    _add_flow_arguments(rerun, ENCODING_CONFIGS | STEERING_CONFIGS | PRUNING_CONFIGS
                        | DYNAMICS_CONFIGS)
    _add_ood_argument(rerun)
    _add_dynamics_arguments(rerun)
    rerun.set_defaults(handler=handlers.rerun, keep_hidden=False)

    steer = commands.add_parser(
        "steer", help="write a copy of a model whose output embeddings multiply the "
                      "probability of chosen tokens by chosen factors")
    steer.add_argument("--token", action="append", required=True, dest="tokens",
                       metavar="TOKEN",
                       help="a token to steer: text that is exactly one token, or an id "
                            "(repeat with --ratio for several)")
    steer.add_argument("--ratio", action="append", required=True, type=float,
                       dest="edit_ratios", metavar="R",
                       help="the factor for the matching --token (2 doubles its probability)")
    steer.add_argument("--out", required=True, help="folder to write the steered model to")
    steer.add_argument("--method", choices=["calibrated", "closed_form"], default="calibrated",
                       help="calibrated: steps solved jointly on the detecting split so that "
                            "each ratio holds there; closed_form: the paper's edit "
                            "−log(r)·ΩAᵀ/(AΩAᵀ) (default: calibrated)")
    # The sweep's own options (its grid of ratios, targets, few-shot) mean nothing here.
    _add_flow_arguments(steer, STEERING_CONFIGS, hidden=SWEEP_ONLY)
    steer.set_defaults(handler=handlers.steer)

    prune = commands.add_parser(
        "prune", help="write a copy of a model with its least salient output-embedding "
                      "dimensions deleted")
    prune.add_argument("--fraction", type=float, required=True,
                       help="share of the dimensions to delete, in [0, 1)")
    prune.add_argument("--out", required=True, help="folder to write the pruned model to")
    prune.add_argument("--compensate", action="store_true",
                       help="fold the least-squares prediction of the deleted hidden "
                            "coordinates from the kept ones (detecting split) into the kept "
                            "columns")
    prune.add_argument("--greedy", action="store_true",
                       help="with --compensate: delete the dimensions that add the least "
                            "compensated logit error first, instead of the least salient")
    _add_flow_arguments(prune, PRUNING_CONFIGS)
    prune.set_defaults(handler=handlers.prune)

    pretrain = commands.add_parser(
        "pretrain", help="pre-train the built-in small GPT-2 on a corpus, keeping "
                         "log-spaced checkpoints (transformers folders)")
    _add_flow_arguments(pretrain, {"pretrain_config": DYNAMICS_CONFIGS["pretrain_config"]},
                        with_model=False)
    pretrain.set_defaults(handler=handlers.pretrain, refresh=[])

    server = commands.add_parser(
        "server", help="start a Prefect server with its UI; tokprob commands run against it "
                       "while it is up")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    server.add_argument("--port", type=int, default=4200, help="port (default: 4200)")
    server.add_argument("--data-dir", help="workspace whose Prefect home holds the database")
    server.set_defaults(handler=handlers.server)

    serve = commands.add_parser(
        "serve", help="run the deployments of prefect.yaml on their schedules in this "
                      "process, without work pool or worker (see cli/serve.py)")
    serve.add_argument("prefect_file", nargs="?", default="prefect.yaml",
                       metavar="PREFECT_YAML",
                       help="the deployments, as `prefect deploy` reads them "
                            "(default: prefect.yaml in the current folder)")
    serve.add_argument("--data-dir", help="artifact store the deployments use")
    serve.set_defaults(handler=handlers.serve)

    report = commands.add_parser(
        "report", help="one HTML (and Markdown) file with every plot and table of a run, "
                       "or of the latest runs about a model")
    report.add_argument("query", metavar="RUN-OR-MODEL",
                        help="a flow run's name or id, or a model (its name or spec)")
    _add_common(report)
    report.set_defaults(handler=handlers.report)

    doctor = commands.add_parser(
        "doctor", help="clear what killed commands leave behind: stale stage locks, "
                       "temporary Prefect servers, a damaged Prefect database")
    _add_common(doctor)
    doctor.set_defaults(handler=handlers.doctor)

    artifacts = commands.add_parser("artifacts", help="list the cached artifacts")
    artifacts.add_argument("--stage", choices=PAPER_STAGES, help="only this stage")
    _add_common(artifacts)
    artifacts.set_defaults(handler=handlers.list_artifacts)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help=PARAMETER_DOCS["data_dir"])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _add_ood_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ood-dataset", default="shakespeare",
                        help=f"{PARAMETER_DOCS['ood_dataset']} (default: shakespeare)")


def _add_dynamics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", type=lambda text: [c for c in text.split(",") if c],
                        default=[], help=PARAMETER_DOCS["checkpoints"])
    parser.add_argument("--alpha", action=argparse.BooleanOptionalAction, default=True,
                        help=f"{PARAMETER_DOCS['alpha']} (default: yes)")
    parser.add_argument("--tokens-per-step", type=float, default=None,
                        help=PARAMETER_DOCS["tokens_per_step"])


SWEEP_ONLY = frozenset({"ratios", "percentiles", "tokens_per_percentile", "targets",
                        "fewshot", "target_seed"})
"""SteeringConfig fields that only the steering sweep reads, not `tokprob steer`."""


def _add_flow_arguments(parser: argparse.ArgumentParser, configs: dict[str, type],
                        with_model: bool = True, hidden: frozenset[str] = frozenset()) -> None:
    if with_model:
        parser.add_argument("--model", default=DEFAULT_MODEL,
                            help=f"{PARAMETER_DOCS['model']} (default: {DEFAULT_MODEL})")
    parser.add_argument("--dataset", default=DEFAULT_DATASET,
                        help=f"{PARAMETER_DOCS['dataset']} (default: {DEFAULT_DATASET})")
    parser.add_argument("--split", default="train",
                        help=f"{PARAMETER_DOCS['split']} (default: train)")
    parser.add_argument("--text-column", default="text",
                        help=f"{PARAMETER_DOCS['text_column']} (default: text)")
    for config in configs.values():
        add_config_arguments(parser, config, hidden)
    parser.set_defaults(configs=configs)
    _add_common(parser)


def add_config_arguments(parser: argparse.ArgumentParser, config: type,
                         hidden: frozenset[str] = frozenset()) -> None:
    """One --option per field of a config dataclass, documented by the field's docstring
    (fields in `hidden` keep their defaults and stay out of --help)."""
    docs = field_docs(config)
    hints = typing.get_type_hints(config)
    for field in dataclasses.fields(config):
        if field.name in hidden:
            parser.set_defaults(**{field.name: field.default})
            continue
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
        elif origin in (typing.Union, types.UnionType):  # choices or a pattern (the config checks)
            options["type"] = type(field.default)
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


if __name__ == "__main__":
    run()
