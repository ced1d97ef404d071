"""The `tokprob` command line: its options, read from the flows' signatures and the
documented fields of their parameter objects (flows/parameters.py).

    tokprob run encoding|steering|pruning|dynamics|paper [options] [--json]
    tokprob steer | prune | pretrain | rerun STAGE | artifacts | report | server | serve
    tokprob doctor

`tokprob COMMAND --help` documents each; cli/commands.py holds what they do. Errors in
what the user asked for print one paragraph and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
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
from flows.parameters import Parameter, flow_signature, flow_summary
from flows.stages import FLOWS, PAPER_STAGES, PARAMETER_DOCS
from tokprob.errors import TokprobError

QUOTED = re.compile(r"(?<=[(\s,])'[^'\n]{1,40}'(?=[,)\s.:])")
"""Short quoted strings such as tokens (' Paris'), whose spaces a line must not break."""


def paragraph(text: str, width: int = 88) -> str:
    """An error message wrapped to the terminal, never inside a quoted token."""
    kept = QUOTED.sub(lambda match: match.group().replace(" ", "\u00a0"), text)
    # An option (--heldout-tokens) is never split at its hyphens.
    return textwrap.fill(kept, width=width, break_on_hyphens=False).replace("\u00a0", " ")


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
    for info in FLOWS.values():
        summary = flow_summary(info.name)
        flow = flows.add_parser(info.name, help=summary[0].lower() + summary[1:],
                                description=summary + ".")
        add_flow_options(flow, info.parameters())
        flow.set_defaults(handler=handlers.run_flow, refresh=[])

    rerun = commands.add_parser("rerun", help="recompute one stage and what depends on it")
    rerun.add_argument("stage", choices=list(dict.fromkeys(
        stage for name in RERUN_FLOWS for stage in FLOWS[name].stages)))
    # Every option of the flows that own a stage, each once.
    add_flow_options(rerun, tuple({parameter.name: parameter for name in reversed(RERUN_FLOWS)
                                   for parameter in FLOWS[name].parameters()}.values()))
    rerun.set_defaults(handler=handlers.rerun)

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
    # The sweep's own options (its grid of ratios, targets, few-shot) mean nothing here.
    add_flow_options(steer, flow_signature("steering", "steer"), hidden=SWEEP_ONLY,
                     own={"tokens", "edit_ratios"})
    steer.set_defaults(handler=handlers.steer)

    prune = commands.add_parser(
        "prune", help="write a copy of a model with its least salient output-embedding "
                      "dimensions deleted")
    prune.add_argument("--compensate", action="store_true",
                       help="fold the least-squares prediction of the deleted hidden "
                            "coordinates from the kept ones (detecting split) into the kept "
                            "columns")
    prune.add_argument("--greedy", action="store_true",
                       help="with --compensate: delete the dimensions that add the least "
                            "compensated logit error first, instead of the least salient "
                            "(the order that also holds on text unlike the detecting split)")
    add_flow_options(prune, flow_signature("pruning", "prune"), own={"method"},
                     unlisted=PRUNING_SWEEP_ONLY)
    prune.set_defaults(handler=handlers.prune)

    pretrain = commands.add_parser(
        "pretrain", help="pre-train the built-in small GPT-2 on a corpus, keeping "
                         "log-spaced checkpoints (transformers folders)")
    add_flow_options(pretrain, flow_signature("dynamics", "pretraining"))
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


SWEEP_ONLY = frozenset({"ratios", "percentiles", "tokens_per_percentile", "targets",
                        "fewshot", "target_seed", "exact_kl"})
"""SteeringConfig fields that only the steering sweep reads, not `tokprob steer`."""

PRUNING_SWEEP_ONLY = frozenset({"fractions", "random_seeds", "js_threshold", "eval_tokens",
                                "prompts", "prompt_tokens", "new_tokens"})
"""PruningConfig fields of the pruning sweep that `tokprob prune` accepts, so that a
`run pruning` command line can be reused with it (the prompts set how many held-out
windows are cut), but does not list: they do not change the model it writes."""

RERUN_FLOWS = ("encoding", "steering", "pruning", "dynamics")
"""The flows `tokprob rerun` chooses from: every stage is one of theirs."""

NOT_OPTIONS = frozenset({"data_dir", "refresh"})
"""Flow parameters given otherwise: --data-dir with the common options, refresh by
`tokprob rerun`."""


def add_flow_options(parser: argparse.ArgumentParser, parameters: tuple[Parameter, ...],
                     hidden: frozenset[str] = frozenset(),
                     own: frozenset[str] | set[str] = frozenset(),
                     unlisted: frozenset[str] = frozenset()) -> None:
    """One --option per value the flow takes: each single-value parameter of its
    signature and each field of its parameter objects, documented by the field's
    docstring or the flow's (`hidden` ones keep their defaults and are refused;
    `unlisted` ones are accepted but stay out of --help; `own` ones the command gives its
    own way)."""
    # --help shows each object's options under its description.
    sections: dict[tuple[str, ...], Any] = {(): parser}
    for parameter in parameters:
        if parameter.group:
            sections[parameter.path] = parser.add_argument_group(
                ".".join(parameter.path), parameter.doc)
            continue
        if parameter.name in NOT_OPTIONS | own:
            continue
        if parameter.name in hidden:
            parser.set_defaults(**{parameter.name: parameter.default})
            continue
        section = sections.get(parameter.path[:-1], parser)
        option = _option(parameter)
        if parameter.name in unlisted:
            option["help"] = argparse.SUPPRESS
        section.add_argument("--" + parameter.name.replace("_", "-"), **option)
    parser.set_defaults(parameters=parameters)
    _add_common(parser)


def _option(parameter: Parameter) -> dict[str, Any]:
    """argparse's settings for one flow value, from its annotation and default."""
    hint = _plain(parameter.hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [_plain(m) for m in typing.get_args(hint) if m is not type(None)]
        # `X | None`: X; choices or a pattern (the config checks): the default's type.
        hint = members[0] if len(members) == 1 else type(parameter.default)
    origin, members = typing.get_origin(hint), typing.get_args(hint)
    default = None if parameter.required else parameter.default
    options: dict[str, Any] = {"default": default,
                               "help": parameter.doc or PARAMETER_DOCS.get(parameter.name, "")}
    if origin is typing.Literal:
        options["choices"] = list(members)
    elif hint is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif origin is tuple and members[0] is str:
        options.update(action="append", default=None)  # repeat the option
    elif origin in (tuple, list):
        options["type"] = _comma_separated(_plain(members[0]), origin)
    else:
        options["type"] = hint
    if parameter.required:
        options["required"] = True
    elif default not in ((), None):
        shown = (",".join(map(str, default)) if origin is tuple
                 else ("yes" if default else "no") if hint is bool else default)
        options["help"] += f" (default: {shown})"
    return options


def _plain(hint: Any) -> Any:
    """The type under an `Annotated` one's bounds (the configs check those)."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint


def _comma_separated(kind: type, container: type = tuple):
    def parse(text: str) -> Any:
        try:
            return container(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} "
                                             f"values, got {text!r}") from None
    return parse


if __name__ == "__main__":
    run()
